"""Engines: `extract` in one process vs 2 torchrun ranks vs Ray with 2 CPU actors vs Ray on its default
options (``ray-defaults``: actors sized to the node found), on the same images and parts; and peak RSS
of one process for 1,000 vs 10,000 images spread over parts.

Every run is a fresh `python -m sail_vision extract` process (what a user starts), timed end to
end (start-up, planning, model loading, encoding, joining); the outputs of the three engines are
compared byte for byte. The RSS runs extract tiny images with the `tiny` checkpoint and
``--part-size`` 1,000, so the larger run crosses ten parts; the peak is the extracting process's
own (``ru_maxrss`` of the waited-for child, ``--workers 0``).

    python benchmarks/bench_engines.py            # `small` checkpoint, 48 images at 224 px; ~5 min
    python benchmarks/bench_engines.py --quick    # tiny sizes (tests)
    python benchmarks/bench_engines.py --engines single ray-defaults --no-rss --results-name bench_engines_ray_defaults
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_CACHE_DIR, cached_checkpoint, print_table, run_and_save, write_noise_jpegs  # noqa: E402

ENGINES = ("single", "torchrun-2", "ray-2", "ray-defaults")


def _command(engine: str, checkpoint: Path, images: Path, out: Path, args) -> list[str]:
    common = ["--checkpoint", str(checkpoint), "--images", str(images), "--out", str(out), "--resolution",
              str(args.resolution), "--layers", "-1", "--pool", "mean", "patch", "--batch-size", str(args.batch),
              "--part-size", str(args.part_size), "--workers", "0", "--dtype", "float32", "--device", "cpu",
              "--no-progress", "--allow-failures"]
    if engine == "single":
        return [sys.executable, "-m", "sail_vision", "extract", *common]
    if engine == "torchrun-2":
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--module",
                "sail_vision", "extract", *common]
    if engine == "ray-defaults":  # what a user gets: actors sized to the node found
        return [sys.executable, "-m", "sail_vision", "extract", *common, "--engine", "ray"]
    return [sys.executable, "-m", "sail_vision", "extract", *common, "--engine", "ray", "--ray-actors", "2",
            "--ray-cpus-per-actor", "1"]


def _run(command: list[str], env: dict | None = None) -> tuple[float, int]:
    """(wall seconds, peak RSS in bytes of the largest waited-for descendant so far)."""
    started = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command[:6])} ... failed:\n{proc.stderr[-3000:]}")
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir() if p.name != "manifest.json")
    return names == sorted(p.name for p in b.iterdir() if p.name != "manifest.json") and all(
        (a / n).read_bytes() == (b / n).read_bytes() for n in names)


def _rss_run(checkpoint: Path, images: Path, out: Path, count: int, part_size: int) -> dict:
    """One extraction in a fresh process that reports its own peak RSS (VmHWM) as its last line."""
    code = (
        "import json, sys\n"
        "from sail_vision.extraction import extract\n"
        f"r = extract({str(checkpoint)!r}, {str(images)!r}, {str(out)!r}, layers=[-1], pools=['mean', 'patch'], "
        f"resolution=32, batch_size=64, workers=0, limit={count}, part_size={part_size}, progress=False, "
        "dtype='float32', device='cpu')\n"
        "hwm = dict(l.split(':', 1) for l in open('/proc/self/status'))['VmHWM']\n"
        "print(json.dumps({'images': r.num_items, 'peak_rss_bytes': int(hwm.split()[0]) * 1024, "
        "'output_bytes': r.output_bytes}))\n")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"RSS run failed:\n{proc.stderr[-3000:]}")
    import json

    row = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**row, "count": count, "part_size": part_size, "parts": -(-count // part_size),
            "seconds": time.perf_counter() - started}


def run(args) -> dict:
    cache = Path(args.cache_dir)
    model = cached_checkpoint(cache, "tiny" if args.quick else "small")
    tiny = cached_checkpoint(cache, "tiny")
    rows, outputs = [], {}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        tmp = Path(tmp)
        images = tmp / "images"
        write_noise_jpegs(images, args.images)
        for engine in args.engines:
            out = tmp / f"out-{engine}"
            seconds, _ = _run(_command(engine, model, images, out, args))
            outputs[engine] = out
            rows.append({"engine": engine, "images": args.images, "parts": -(-args.images // args.part_size),
                         "seconds": seconds, "images_s": args.images / seconds})
        reference = outputs[args.engines[0]]
        for row in rows:
            row["same_bytes_as_" + args.engines[0]] = _same_files(outputs[row["engine"]], reference)
            row["vs_single"] = rows[0]["seconds"] / row["seconds"]
        print_table(rows, list(rows[0]), title=f"engines, {'tiny' if args.quick else 'small'} checkpoint, "
                                               f"{args.resolution} px, float32 CPU, end to end")
        memory = []
        if not args.no_rss:
            small = tmp / "small-images"
            write_noise_jpegs(small, max(args.rss_counts), sides=(32, 48))
            memory = [_rss_run(tiny, small, tmp / f"rss-{count}", count, args.rss_part_size)
                      for count in args.rss_counts]
    if memory:
        print_table(memory, ["count", "parts", "part_size", "images", "peak_rss_bytes", "output_bytes", "seconds"],
                    title="peak RSS of one process across parts (tiny checkpoint, 32 px, mean + patch)")
    growth = memory[-1]["peak_rss_bytes"] / memory[0]["peak_rss_bytes"] if memory else None
    return {"engines": rows, "memory": memory, "rss_growth": growth, "cpus": os.cpu_count(),
            "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
            "settings": {k: v for k, v in vars(args).items() if k != "cache_dir"}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (checks the script)")
    parser.add_argument("--images", type=int, default=None, help="images per engine run (48; quick 8)")
    parser.add_argument("--resolution", type=int, default=None, help="pixels (224; quick 32)")
    parser.add_argument("--batch", type=int, default=8, help="images per forward")
    parser.add_argument("--part-size", type=int, default=None, help="images per part (12; quick 2)")
    parser.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    parser.add_argument("--rss-counts", type=int, nargs=2, default=None, help="images of the RSS runs (1000 10000)")
    parser.add_argument("--rss-part-size", type=int, default=None, help="part size of the RSS runs (1000)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="where random checkpoints are cached")
    parser.add_argument("--no-rss", action="store_true", help="skip the peak-RSS runs (engines only)")
    parser.add_argument("--results-name", default="bench_engines",
                        help="results file stem under benchmarks/results (keep other runs' results)")
    args = parser.parse_args(argv)
    args.images = args.images or (8 if args.quick else 48)
    args.resolution = args.resolution or (32 if args.quick else 224)
    args.part_size = args.part_size or (2 if args.quick else 12)
    args.rss_counts = args.rss_counts or ([50, 200] if args.quick else [1000, 10000])
    args.rss_part_size = args.rss_part_size or (50 if args.quick else 1000)
    run_and_save(parser, lambda: run(args), args.results_name, args.quick)


if __name__ == "__main__":
    main()
