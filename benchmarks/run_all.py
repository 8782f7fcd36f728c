"""Run every benchmark script, one after another, each in its own process.

    python benchmarks/run_all.py            # full runs (tens of minutes; memory needs ~15 GB disk)
    python benchmarks/run_all.py --quick    # every script at tiny sizes: well under a minute each
    python benchmarks/run_all.py --only bench_throughput bench_memory

Each script prints its table and writes benchmarks/results/<script>[-quick].json. The exit code
is non-zero if any script failed; the others still run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Script -> extra arguments it accepts beyond --quick.
SCRIPTS = {
    "bench_throughput": ["--cache-dir"],
    "bench_memory": ["--cache-dir"],
    "bench_extract": [],
    "bench_probe_grid": [],
    "bench_attentive": [],
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script (CI sizes)")
    parser.add_argument("--only", nargs="+", choices=list(SCRIPTS), default=list(SCRIPTS),
                        help="scripts to run, in this order")
    parser.add_argument("--cache-dir", default=None,
                        help="checkpoint cache for the scripts that take one (default: each script's own)")
    args = parser.parse_args(argv)
    failed = []
    for name in args.only:
        cmd = [sys.executable, str(HERE / f"{name}.py")]
        if args.quick:
            cmd.append("--quick")
        if args.cache_dir and "--cache-dir" in SCRIPTS[name]:
            cmd += ["--cache-dir", args.cache_dir]
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        start = time.perf_counter()
        code = subprocess.call(cmd)
        print(f"=== {name}: exit {code} after {time.perf_counter() - start:.1f} s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
