"""Probe speed on the device: kNN queries/s over a large float16 bank, and the segmentation probe's
training images/s end to end (``sail-vision probe --task segmentation``) on SAIL-7B-wide patch features.

kNN: a memory-mapped float16 bank of ``--bank-rows`` x ``--dim`` (like `extract` output) and
``--queries`` queries, ``evaluate_knn`` with k in (10, 20, 100, 200): each bank row is read once per
evaluation. Segmentation: synthetic ADE20K-layout images extracted with ``--pool patch`` by a
``--seg-layers``-block random checkpoint of SAIL-7B's width, then the probe's lr x wd grid trained
for ``--epochs``; reported as training images x epochs per second of the probe command.

    python benchmarks/bench_probes_gpu.py --device cuda   # part of benchmarks/gpu_check.sh
    python benchmarks/bench_probes_gpu.py --quick         # small sizes, any device (checks the script)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cached_checkpoint, print_table, run_and_save  # noqa: E402


def knn_row(args, device, folder: Path) -> dict:
    import torch

    from sail_vision.probes import FeatureInput, load_arrays
    from sail_vision.probes.knn import evaluate_knn

    rng = np.random.default_rng(0)
    bank = np.lib.format.open_memmap(folder / "bank.npy", mode="w+", dtype=np.float16, shape=(args.bank_rows, args.dim))
    for start in range(0, args.bank_rows, 16384):
        stop = min(args.bank_rows, start + 16384)
        bank[start:stop] = rng.standard_normal((stop - start, args.dim), dtype=np.float32)
    bank.flush()
    bank = np.load(folder / "bank.npy", mmap_mode="r")
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32).astype(np.float16)
    train = load_arrays(bank, rng.integers(0, 1000, args.bank_rows), name="x")
    val = load_arrays(queries, rng.integers(0, 1000, args.queries), name="x")
    ks = [k for k in (10, 20, 100, 200) if k <= args.bank_rows]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    evaluate_knn(train, np.arange(args.bank_rows), val, None, FeatureInput(("x",)), ks, 1000, device=device)
    seconds = time.perf_counter() - start
    return {"probe": "knn", "bank_rows": args.bank_rows, "queries": args.queries, "dim": args.dim, "seconds": seconds,
            "queries_s": args.queries / seconds, "bank_rows_s": args.bank_rows / seconds,
            "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None}


def segmentation_row(args, device, folder: Path) -> dict:
    import torch

    from sail_vision.cli import main as cli
    from sail_vision.mmseg.synthetic import make_synthetic_dataset

    preset = "tiny" if args.quick else "sail-7b"
    ckpt = cached_checkpoint(Path(args.cache_dir), preset, dtype="bfloat16", num_hidden_layers=args.seg_layers)
    patch = 8 if args.quick else 32
    data = make_synthetic_dataset(folder / "seg", num_train=args.seg_images, num_val=max(4, args.seg_images // 4),
                                  size=args.seg_size, cell=patch * 2)
    for split in ("training", "validation"):
        (data / "annotations" / split / "classes.txt").write_text("red\ngreen\nblue\nyellow\n")
        code = cli(["extract", "--checkpoint", str(ckpt), "--layout", "pairs", "--images", str(data / "images" / split),
                    "--masks", str(data / "annotations" / split), "--reduce-zero-label", "--pool", "patch",
                    "--layers", "-1",
                    "--resolution", str(args.seg_size), "--device", str(device), "--workers", "2", "--no-progress",
                    "--out", str(folder / f"feat-{split}")])
        if code != 0:
            raise RuntimeError(f"extract of the {split} split failed ({code})")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    code = cli(["probe", "--task", "segmentation", "--train", str(folder / "feat-training"),
                "--val", str(folder / "feat-validation"), "--features", f"layer-{args.seg_layers}_patch",
                "--lrs", "0.001,0.01", "--wds", "0.0001",
                "--epochs", str(args.epochs), "--batch-size", "8", "--device", str(device), "--quiet",
                "--out", str(folder / "probe")])
    seconds = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"the segmentation probe failed ({code})")
    return {"probe": "segmentation", "train_images": args.seg_images, "epochs": args.epochs, "size": args.seg_size,
            "seconds": seconds, "train_images_epochs_s": args.seg_images * args.epochs / seconds,
            "peak_gpu_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None}


def run(args) -> dict:
    from sail_vision.devices import resolve_device

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="bench-probes-") as tmp:
        rows = [knn_row(args, device, Path(tmp))]
        rows.append(segmentation_row(args, device, Path(tmp)))
    print_table(rows, ["probe", "bank_rows", "queries", "dim", "queries_s", "train_images", "epochs",
                       "train_images_epochs_s", "seconds", "peak_gpu_gb"], title=f"probes on {device}")
    return {"device": str(device), "rows": rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="small sizes (checks the script on any device)")
    parser.add_argument("--bank-rows", type=int, default=200_000, help="kNN bank rows")
    parser.add_argument("--queries", type=int, default=10_000, help="kNN queries")
    parser.add_argument("--dim", type=int, default=4096, help="feature width")
    parser.add_argument("--seg-images", type=int, default=256, help="segmentation training images")
    parser.add_argument("--seg-size", type=int, default=448, help="segmentation image size (pixels)")
    parser.add_argument("--seg-layers", type=int, default=2, help="blocks of the checkpoint the features come from")
    parser.add_argument("--epochs", type=int, default=4, help="segmentation probe epochs")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "sail-bench-cache"),
                        help="where the random checkpoint is written once and reused")
    args = parser.parse_args(argv)
    if args.quick:
        args.bank_rows, args.queries, args.dim = 5000, 500, 64
        args.seg_images, args.seg_size, args.epochs = 8, 32, 1
    run_and_save(parser, lambda: run(args), "bench_probes_gpu", args.quick)


if __name__ == "__main__":
    main()
