"""Benchmark `sail-vision extract`: throughput and memory.

- images/s at 224 and 448 px (shorter side + center crop) with the random "small" checkpoint
  (12 blocks x 1024, patch 32; float32 on CPU), DataLoader workers 0 vs 2;
- peak RSS of the extracting process (VmHWM; plus the median RSS in each tenth of the run) for
  1,000 vs 10,000 images with the "tiny" checkpoint at 112 px, storing patch and mean features
  (about 100 KB per image), which must stay flat as the dataset (and output) grows.

Every measurement runs in a fresh subprocess. Results: a table on stdout and
benchmarks/results/bench_extract[-quick].json. ``--quick`` is a seconds-long CI-size run.

``--vs-encoder`` instead measures issue 13's target, `extract` end to end at >= 90 % of the bare
encoder's images/s on the same images: the random "small" checkpoint, ``--images`` random-noise
JPEGs (300-500 px sides) at ``--resolution`` (shorter side + center crop), float32 on the CPU,
``--threads`` torch threads for both; `extract` (a fresh output folder per call: plan, load, decode,
encode, copy, write) with each of ``--workers`` against the bare encoder (loaded once, the images
decoded beforehand: ``encode_patches`` on batches of ``--batch``, mean pool, copy to numpy),
alternating in this process over ``--rounds`` rounds after one warm-up round; medians and ratios
in benchmarks/results/bench_extract_vs_encoder[-quick].json.

    python benchmarks/bench_extract.py [--quick]
    python benchmarks/bench_extract.py --vs-encoder [--quick] [--images 64] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
sys.path.insert(0, str(Path(__file__).resolve().parent))
#: Issue 13: `extract` end to end reaches at least this share of the bare encoder's images/s.
TARGET_VS_ENCODER = 0.9


class _RssSampler:
    """Samples this process's resident memory (anonymous and file-backed) every 0.1 s."""

    def __init__(self):
        import threading

        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
                anon, file_backed = (int(fields[k].split()[0]) * 1024 for k in ("RssAnon", "RssFile"))
                self.samples.append((anon, file_backed))
            except (OSError, KeyError, ValueError):
                return
            self._stop.wait(0.1)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        if not self.samples:
            return {}
        totals = [a + f for a, f in self.samples]
        tenths = [sorted(totals[i * len(totals) // 10:(i + 1) * len(totals) // 10] or totals) for i in range(10)]
        return {"median_rss_bytes": sorted(totals)[len(totals) // 2],
                "median_rss_by_tenth_bytes": [t[len(t) // 2] for t in tenths],
                "peak_anon_bytes": max(a for a, _ in self.samples),
                "peak_file_backed_bytes": max(f for _, f in self.samples)}


def _child(spec: dict) -> None:
    """Run one extraction and print a JSON line with timings and peak memory."""
    from sail_vision.encoder import SailEncoder
    from sail_vision.extraction import extract

    started = time.perf_counter()
    SailEncoder.from_pretrained(spec["checkpoint"])  # also warms the page cache
    load_seconds = time.perf_counter() - started
    sampler = _RssSampler()
    started = time.perf_counter()
    result = extract(spec["checkpoint"], spec["images"], spec["out"], layers=spec["layers"], pools=spec["pools"],
                     resolution=spec["resolution"], batch_size=spec["batch_size"], workers=spec["workers"],
                     limit=spec["limit"], progress=False, dtype="float32", device="cpu")
    seconds = time.perf_counter() - started
    memory = sampler.stop()
    # VmHWM: this process's peak since exec (ru_maxrss would include the parent's peak).
    fields = dict(line.split(":", 1) for line in open("/proc/self/status"))
    own = int(fields["VmHWM"].split()[0]) * 1024
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "load_seconds": load_seconds, "images": result.num_items,
                      "failed": result.num_failed, "output_bytes": result.output_bytes,
                      "peak_rss_bytes": own, "peak_worker_rss_bytes": workers, **memory}))


def _run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _source_images(folder: Path, count: int) -> list[Path]:
    """ImageNet-like JPEGs (500x375 and 375x500) made from scikit-learn's sample photos."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    photos = [Image.fromarray(a) for a in load_sample_images().images]
    paths = []
    for i in range(count):
        photo = photos[i % 2]
        left, top = (i * 37) % 140, (i * 23) % 52
        crop = photo.crop((left, top, left + 500, top + 375))
        if i % 3 == 2:
            crop = crop.transpose(Image.Transpose.ROTATE_90)
        paths.append(folder / f"src{i:04d}.jpg")
        crop.save(paths[-1], quality=90)
    return paths


def _linked_folder(folder: Path, sources: list[Path], count: int) -> Path:
    """``count`` distinct paths (hard links to the sources), like a large dataset folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        link = folder / f"{i // 1000:03d}" / f"img{i:06d}.jpg"
        link.parent.mkdir(exist_ok=True)
        if not link.exists():
            os.link(sources[i % len(sources)], link)
    return folder


def _checkpoint(preset: str) -> Path:
    from sail_vision.checkpoint_generator import cached_checkpoint
    from sail_vision.demo import cache_dir

    return cached_checkpoint(cache_dir() / "checkpoints" / f"bench-{preset}-seed0", preset, progress=True)[0]


def _vs_encoder(args) -> None:
    """`extract` end to end vs the bare encoder, alternating in this process (see the module docstring)."""
    import torch

    from _common import (DEFAULT_CACHE_DIR, cached_checkpoint, extract_vs_encoder, print_table, write_noise_jpegs,
                         write_results)

    quick = args.quick
    preset = "tiny" if quick else "small"
    images = args.images or (8 if quick else 64)
    resolution = args.resolution or (32 if quick else 224)
    batch = args.batch or (4 if quick else 16)
    workers = args.workers or ([0, 1] if quick else [0, 2])
    rounds = args.rounds or (1 if quick else 5)
    torch.set_num_threads(args.threads)
    ckpt = cached_checkpoint(Path(args.cache_dir) if args.cache_dir else DEFAULT_CACHE_DIR, preset)
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-extract-vs-encoder-") as tmp:
        folder = Path(tmp) / "images"
        write_noise_jpegs(folder, images)
        compared = extract_vs_encoder(ckpt, folder, Path(tmp), resolution=resolution, dtype="float32", device="cpu",
                                      batch=batch, workers=workers, rounds=rounds)
    seconds = time.perf_counter() - started
    rows = [{**row, "checkpoint": preset, "threads": args.threads, "target": TARGET_VS_ENCODER,
             "met": row["extract_vs_encoder"] >= TARGET_VS_ENCODER} for row in compared["rows"]]
    print_table(rows, ["checkpoint", "resolution", "batch", "workers", "threads", "images", "encoder_images_s",
                       "extract_images_s", "extract_vs_encoder", "paired_ratio", "target", "met"],
                title=f"extract end to end vs the bare encoder, float32 CPU, median of {rounds} alternating rounds")
    print(f"features max abs difference (float16): {compared['features_max_abs_diff']:.3g}; {seconds:.0f} s; "
          f"load average {load_before[0]:.2f} before, {os.getloadavg()[0]:.2f} after")
    path = write_results("bench_extract_vs_encoder", {
        "checkpoint": preset, "threads": args.threads, "target": TARGET_VS_ENCODER, "rows": rows,
        "times_s": compared["times_s"], "rounds": rounds, "warmup": compared["warmup"],
        "features_max_abs_diff": compared["features_max_abs_diff"], "seconds": seconds,
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg())}, quick)
    print(f"saved {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds (CI)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--vs-encoder", action="store_true",
                        help="`extract` end to end vs the bare encoder on the same images (issue 13's 90 %% target)")
    group = parser.add_argument_group("--vs-encoder options (defaults; --quick: tiny checkpoint, 8 images, 32 px, "
                                      "batch 4, workers 0 1, 1 round)")
    group.add_argument("--images", type=int, default=None, help="random JPEGs (default 64)")
    group.add_argument("--resolution", type=int, default=None, help="pixels, shorter side + center crop (224)")
    group.add_argument("--batch", type=int, default=None, help="images per forward, both sides (16)")
    group.add_argument("--workers", type=int, nargs="+", default=None, help="`extract` DataLoader workers (0 2)")
    group.add_argument("--rounds", type=int, default=None, help="timed alternating rounds (5)")
    group.add_argument("--threads", type=int, default=1, help="torch threads, the same for both")
    group.add_argument("--cache-dir", default=None,
                       help="where the random checkpoint is written once (default $SAIL_BENCH_CACHE or /work/bench-cache)")
    args = parser.parse_args()
    if args.child:
        _child(json.loads(args.child))
        return
    if args.vs_encoder:
        _vs_encoder(args)
        return

    quick = args.quick
    throughput_images = 8 if quick else 96
    resolutions = (32, 64) if quick else (224, 448)
    rss_counts = (50, 200) if quick else (1000, 10000)
    throughput_preset = "tiny" if quick else "small"
    report = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                          "platform": platform.platform()},
              "quick": quick, "throughput": [], "memory": []}
    import torch

    report["machine"]["torch"] = torch.__version__
    with tempfile.TemporaryDirectory(prefix="bench-extract-") as tmp:
        tmp = Path(tmp)
        sources = _source_images(tmp / "sources", 16 if quick else 200)
        folder = _linked_folder(tmp / "dataset", sources, max(rss_counts))
        big = _checkpoint(throughput_preset)
        for resolution in resolutions:
            for workers in (0, 2):
                spec = {"checkpoint": str(big), "images": str(folder), "out": str(tmp / f"t{resolution}-{workers}"),
                        "layers": [-1], "pools": ["mean"], "resolution": resolution, "batch_size": 16,
                        "workers": workers, "limit": throughput_images}
                row = _run_child(spec)
                row.update(resolution=resolution, workers=workers, checkpoint=throughput_preset,
                           images_per_second=row["images"] / row["seconds"])
                report["throughput"].append(row)
                print(f"throughput {resolution}px workers={workers}: {row['images_per_second']:.2f} images/s",
                      flush=True)
        tiny = _checkpoint("tiny")
        for count in rss_counts:
            spec = {"checkpoint": str(tiny), "images": str(folder), "out": str(tmp / f"m{count}"), "layers": [-1],
                    "pools": ["patch", "mean"], "resolution": 112, "batch_size": 32, "workers": 2, "limit": count}
            row = _run_child(spec)
            row.update(count=count, checkpoint="tiny", resolution=112, workers=2,
                       images_per_second=row["images"] / row["seconds"])
            report["memory"].append(row)
            print(f"memory {count} images: peak RSS {row['peak_rss_bytes'] / 2**20:.0f} MiB, median "
                  f"{row.get('median_rss_bytes', 0) / 2**20:.0f} MiB, output "
                  f"{row['output_bytes'] / 2**20:.0f} MiB", flush=True)

    first, last = report["memory"][0], report["memory"][-1]
    report["rss_growth_ratio"] = last["peak_rss_bytes"] / first["peak_rss_bytes"]
    print()
    print(f"{'checkpoint':<10} {'px':>4} {'workers':>7} {'images':>6} {'images/s':>9} {'s':>7}")
    for row in report["throughput"]:
        print(f"{row['checkpoint']:<10} {row['resolution']:>4} {row['workers']:>7} {row['images']:>6} "
              f"{row['images_per_second']:>9.2f} {row['seconds']:>7.1f}")
    print()
    print(f"{'images':>7} {'output MiB':>10} {'peak RSS':>9} {'median':>7} {'peak anon':>9} {'peak file':>9} "
          f"{'worker peak':>11} {'images/s':>9}   (memory in MiB)")
    for row in report["memory"]:
        mib = {k: row.get(k, 0) / 2**20 for k in ("output_bytes", "peak_rss_bytes", "median_rss_bytes",
                                                   "peak_anon_bytes", "peak_file_backed_bytes",
                                                   "peak_worker_rss_bytes")}
        print(f"{row['count']:>7} {mib['output_bytes']:>10.0f} {mib['peak_rss_bytes']:>9.0f} "
              f"{mib['median_rss_bytes']:>7.0f} {mib['peak_anon_bytes']:>9.0f} {mib['peak_file_backed_bytes']:>9.0f} "
              f"{mib['peak_worker_rss_bytes']:>11.0f} {row['images_per_second']:>9.1f}")
    print(f"peak RSS ratio {rss_counts[-1]} vs {rss_counts[0]} images: {report['rss_growth_ratio']:.2f}")
    for row in report["memory"]:
        tenths = " ".join(f"{v / 2**20:.0f}" for v in row.get("median_rss_by_tenth_bytes", []))
        print(f"median RSS (MiB) in each tenth of the {row['count']}-image run: {tenths}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("bench_extract-quick.json" if quick else "bench_extract.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
