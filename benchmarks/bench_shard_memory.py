"""Peak RSS of `extract` over one WebDataset shard with a huge non-image member vs without it.

The shard (``.tar.gz``, also read through a ``pipe:cat`` command) holds small JPEG samples and, in
the "with member" runs, one zero-filled ``.txt`` member of ``--member-mib`` MiB (1 GiB by default:
a few MB compressed). Members that are not images or labels are skipped unread, so the peak should
be the same with and without it (target: within 10 %). Each run is a fresh process
(``sail_vision.extraction.extract`` with the ``tiny`` checkpoint, 32 px, ``--workers 0``) that
reports its own peak RSS (``VmHWM``).

    python benchmarks/bench_shard_memory.py            # 1 GiB member; ~1 min
    python benchmarks/bench_shard_memory.py --quick    # 8 MiB member (tests)
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_CACHE_DIR, cached_checkpoint, print_table, run_and_save, write_noise_jpegs  # noqa: E402

MIB = 1024 * 1024


class _Zeros(io.RawIOBase):
    """``size`` zero bytes, read in chunks (the member is never held in memory while writing)."""

    def __init__(self, size: int):
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


def write_shard(path: Path, images: list[Path], member_bytes: int) -> int:
    """A gzip-compressed tar of ``images`` as samples (``<i>.jpg`` + ``<i>.cls``), with a zero-filled
    ``big.txt`` member of ``member_bytes`` after the first sample when > 0; returns the file size."""
    with gzip.open(path, "wb", compresslevel=1) as raw, tarfile.open(fileobj=raw, mode="w|") as tar:
        for i, image in enumerate(images):
            tar.add(str(image), arcname=f"{i:05d}.jpg")
            label = str(i % 2).encode()
            info = tarfile.TarInfo(f"{i:05d}.cls")
            info.size = len(label)
            tar.addfile(info, io.BytesIO(label))
            if i == 0 and member_bytes:
                info = tarfile.TarInfo(f"{i:05d}.txt")
                info.size = member_bytes
                tar.addfile(info, io.BufferedReader(_Zeros(member_bytes), 1 << 20))
    return path.stat().st_size


def _rss_run(checkpoint: Path, spec: str, out: Path) -> dict:
    code = (
        "import json\n"
        "from sail_vision.extraction import extract\n"
        f"r = extract({str(checkpoint)!r}, {spec!r}, {str(out)!r}, layers=[-1], pools=['mean'], resolution=32, "
        "batch_size=16, workers=0, progress=False, dtype='float32', device='cpu')\n"
        "hwm = dict(l.split(':', 1) for l in open('/proc/self/status'))['VmHWM']\n"
        "print(json.dumps({'images': r.num_items, 'ok': r.num_valid, 'failed': r.num_failed, "
        "'peak_rss_bytes': int(hwm.split()[0]) * 1024}))\n")
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"extract over {spec} failed:\n{proc.stderr[-3000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "seconds": time.perf_counter() - started}


def run(args) -> dict:
    checkpoint = cached_checkpoint(Path(args.cache_dir), "tiny")
    member = args.member_mib * MIB
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-shard-memory-") as tmp:
        tmp = Path(tmp)
        images = write_noise_jpegs(tmp / "images", args.images, sides=(32, 64))
        shards = {"none": tmp / "plain.tar.gz", "member": tmp / "member.tar.gz"}
        sizes = {name: write_shard(path, images, member if name == "member" else 0) for name, path in shards.items()}
        runs = [("none", "tar.gz", str(shards["none"])), ("member", "tar.gz", str(shards["member"])),
                ("none", "pipe", f"pipe:cat {shards['none']}"), ("member", "pipe", f"pipe:cat {shards['member']}")]
        for repeat in range(args.repeats):
            for name, kind, spec in runs:
                row = _rss_run(checkpoint, spec, tmp / f"out-{name}-{kind}-{repeat}")
                rows.append({"member": name, "read_as": kind, "repeat": repeat,
                             "member_bytes": member * (name == "member"),
                             "shard_bytes": sizes[name], **row})
    print_table(rows, ["member", "read_as", "repeat", "member_bytes", "shard_bytes", "images", "ok", "failed",
                       "peak_rss_bytes", "seconds"],
                title=f"peak RSS of extract over one .tar.gz shard ({args.images} images, tiny checkpoint, 32 px)")
    ratios = {}
    for kind in ("tar.gz", "pipe"):
        peak = {name: max(r["peak_rss_bytes"] for r in rows if r["read_as"] == kind and r["member"] == name)
                for name in ("none", "member")}
        ratios[kind] = peak["member"] / peak["none"]
    print("peak RSS with / without the member: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    return {"rows": rows, "rss_ratio_member_vs_none": ratios,
            "settings": {k: v for k, v in vars(args).items() if k != "cache_dir"}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="an 8 MiB member (checks the script)")
    parser.add_argument("--member-mib", type=int, default=None, help="size of the non-image member (1024; quick 8)")
    parser.add_argument("--images", type=int, default=None, help="JPEG samples in the shard (32; quick 6)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each case (2; quick 1)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="where random checkpoints are cached")
    args = parser.parse_args(argv)
    args.member_mib = args.member_mib or (8 if args.quick else 1024)
    args.images = args.images or (6 if args.quick else 32)
    args.repeats = args.repeats or (1 if args.quick else 2)
    run_and_save(parser, lambda: run(args), "bench_shard_memory", args.quick)


if __name__ == "__main__":
    main()
