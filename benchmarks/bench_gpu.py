"""GPU figures: SAIL-7B-shaped encoder throughput, its fraction of the dense peak, peak GPU memory,
and `extract` end to end against the bare encoder on the same images.

The encoder part builds SAIL-7B's shapes (32 blocks x 4096, 32 heads, 8 key/value heads, MLP 14336,
patch 32) with random weights straight on the GPU: no 15 GB checkpoint is written. The extraction
part writes a SAIL-7B-shaped checkpoint with fewer blocks (``--extract-layers``, default 4) so the
disk cost stays small, and compares `extract`'s images/s with the bare encoder's on the same decoded
images (alternating rounds, medians; ``_common.extract_vs_encoder``): the ratio says how much of the
encoder's speed survives decode, upload, copy-back and writing. On CUDA one more, separate `extract`
run goes under torch.profiler (CUDA activity only) for ``gpu_busy``: the share of that run's wall
time during which at least one CUDA kernel runs (the union of the kernels' device intervals; with
memcpy / memset too in ``gpu_busy_with_copies``). The profiler's overhead stays out of the timed
rounds; it is inside the profiled run's wall time, so ``gpu_busy`` errs low, if anything.

    python benchmarks/bench_gpu.py                   # on a CUDA machine (a few minutes)
    python benchmarks/bench_gpu.py --quick           # tiny shapes, any device (checks the script)
    python benchmarks/bench_gpu.py --peak-tflops 989 # state the GPU's dense bf16 peak yourself

It also times images of mixed grids (native resolution) packed into one sequence (block-diagonal
attention with the kernel ``auto`` picks on this GPU) against grouped batches of one grid each.
``benchmarks/gpu_check.sh`` runs it with the CUDA tests and ``bench_probes_gpu.py``;
``benchmarks/render_gpu_table.py`` turns the JSON into BENCHMARKS.md's table.

Dense bf16 peaks known by name (TFLOP/s, no sparsity): H100/H200 SXM 989, H100 PCIe 756, A100 312,
L40S 362, A10 125. FLOPs per image are analytic (every linear layer and both attention products).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (cached_checkpoint, extract_vs_encoder, median, print_table, run_and_save,  # noqa: E402
                     synchronize, write_noise_jpegs)

DENSE_BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0,
                          "A10": 125.0}


def flops_per_image(cfg, tokens: int, blocks: int) -> float:
    """Analytic FLOPs of ``blocks`` SAIL blocks on one sequence of ``tokens`` tokens."""
    h, kv = cfg.hidden_size, cfg.num_key_value_heads * cfg.head_dim
    linear = 2 * tokens * (2 * h * h + 2 * h * kv + 3 * h * cfg.intermediate_size)
    attention = 2 * 2 * tokens * tokens * h
    return blocks * (linear + attention) + 2 * tokens * cfg.patch_dim * h


def peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in DENSE_BF16_PEAK_TFLOPS.items() if k in name), None)


def random_encoder(cfg, device: torch.device, dtype: torch.dtype):
    """A SailEncoder of ``cfg``'s shapes with random weights, built on ``device`` (no checkpoint)."""
    from sail_vision.checkpoint import VisionTokenIds
    from sail_vision.encoder import SailEncoder

    ids = VisionTokenIds(*range(cfg.vocab_size - 6, cfg.vocab_size))
    torch.manual_seed(0)
    with torch.device(device):
        encoder = SailEncoder(cfg, ids)
    with torch.no_grad():
        for name, param in encoder.named_parameters():
            if param.dim() > 1:
                param.normal_(0.0, 0.02)
    return encoder.to(dtype=dtype).eval()


def time_encoder(encoder, patches: torch.Tensor, layer: int, rounds: int) -> float:
    """Median seconds of one forward of ``patches`` up to ``layer``."""
    device = patches.device
    encoder.encode_patches(patches, [layer])
    synchronize(device)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        encoder.encode_patches(patches, [layer])
        synchronize(device)
        times.append(time.perf_counter() - start)
    return median(times)


def encoder_rows(cfg, device, dtype, resolutions, batch: int, rounds: int, peak: float | None) -> list[dict]:
    encoder = random_encoder(cfg, device, dtype)
    rows = []
    p = cfg.vision_patch_size
    for res in resolutions:
        n = res // p
        patches = torch.randn(batch, n, n, 3, p, p, device=device)
        for layer in (cfg.num_hidden_layers, cfg.num_hidden_layers // 2):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            seconds = time_encoder(encoder, patches, layer, rounds)
            ips = batch / seconds
            tflops = flops_per_image(cfg, n * n + 2, layer) * ips / 1e12
            rows.append({"resolution": res, "layer": layer, "batch": batch, "dtype": str(dtype).removeprefix("torch."),
                         "images_s": ips, "tflop_s": tflops, "of_peak": tflops / peak if peak else None,
                         "peak_gpu_gb": (torch.cuda.max_memory_allocated(device) / 1e9
                                         if device.type == "cuda" else None)})
    del encoder
    return rows


def mixed_grids(resolution: int, patch: int, count: int, seed: int = 0) -> list[tuple[int, int]]:
    """``count`` patch grids of about (resolution / patch)^2 patches in ImageNet-like aspect ratios (3:4 to
    4:3 and a few 16:9), as native-resolution extraction meets them."""
    rng = np.random.default_rng(seed)
    side = resolution / patch
    ratios = rng.choice([0.75, 0.8, 1.0, 1.25, 4 / 3, 16 / 9, 9 / 16], size=count)
    return [(max(1, round(side / np.sqrt(r))), max(1, round(side * np.sqrt(r)))) for r in ratios]


def packed_rows(cfg, device, dtype, resolutions, batch: int, rounds: int, peak: float | None) -> list[dict]:
    """Images of mixed grids (native resolution): ``packed`` (block-diagonal attention, the kernel
    ``auto`` picks) against ``grouped`` (one batch per grid), all blocks and the middle one."""
    encoder = random_encoder(cfg, device, dtype)
    p = cfg.vision_patch_size
    rows = []
    for res in resolutions:
        grids = mixed_grids(res, p, batch)
        items = [torch.randn(nh, nw, 3, p, p, device=device) for nh, nw in grids]
        tokens = sum(nh * nw + 2 for nh, nw in grids)
        flops = sum(flops_per_image(cfg, nh * nw + 2, 1) for nh, nw in grids)  # per block
        for layer in (cfg.num_hidden_layers, cfg.num_hidden_layers // 2):
            for batching in ("packed", "grouped"):
                def forward():
                    encoder.encode_patches(items, [layer], batching=batching, max_batch_tokens=tokens)

                forward()
                synchronize(device)
                times = []
                for _ in range(rounds):
                    start = time.perf_counter()
                    forward()
                    synchronize(device)
                    times.append(time.perf_counter() - start)
                seconds = median(times)
                tflops = flops * layer / seconds / 1e12
                rows.append({"resolution": res, "layer": layer, "batching": batching, "images": len(items),
                             "kernel": encoder.packed_kernel() if batching == "packed" else "sdpa per grid",
                             "images_s": len(items) / seconds, "tflop_s": tflops,
                             "of_peak": tflops / peak if peak else None})
    del encoder
    return rows


def union_length(intervals) -> float:
    """Length of the union of (start, end) intervals: overlaps and nested intervals count once,
    empty or reversed ones not at all."""
    total = 0.0
    lo = hi = None
    for start, end in sorted((float(a), float(b)) for a, b in intervals if b > a):
        if hi is None or start > hi:
            if hi is not None:
                total += hi - lo
            lo, hi = start, end
        else:
            hi = max(hi, end)
    return total if hi is None else total + hi - lo


def busy_fraction(intervals, wall: float) -> float | None:
    """Share of ``wall`` (same unit as the intervals) during which at least one interval runs."""
    return union_length(intervals) / wall if wall > 0 else None


def device_intervals(events) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(kernel intervals, memcpy / memset intervals), in microseconds, of torch.profiler's CUDA events.

    Kineto names each device activity's kind (``activity_type``: "kernel", "gpu_memcpy",
    "gpu_memset", "gpu_user_annotation" for record_function ranges drawn on the GPU row, ...);
    where an older torch has no ``activity_type``, copies and memsets are told by their names."""
    from torch.autograd import DeviceType

    kernels, copies = [], []
    for evt in events:
        if evt.device_type != DeviceType.CUDA:
            continue
        kind = getattr(evt, "activity_type", None)
        if kind is None:
            kind = "gpu_memcpy" if evt.name.startswith(("Memcpy", "Memset")) else "kernel"
        span = (evt.time_range.start, evt.time_range.end)
        if kind == "kernel":
            kernels.append(span)
        elif kind in ("gpu_memcpy", "gpu_memset"):
            copies.append(span)
    return kernels, copies


def profiled_extract(ckpt, images: Path, out: Path, *, res, dtype, device, batch, workers, limit) -> dict:
    """GPU busy fraction of one separate `extract` run under torch.profiler (CUDA activity only):
    the union of its kernels' device time over the run's wall time (profiler overhead included in
    that wall time, so the figure is the profiled run's, not the timed runs')."""
    from torch.profiler import ProfilerActivity, profile

    from sail_vision.extraction import extract

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        result = extract(ckpt, images, out, layers=[-1], pools=["mean"], resolution=res, dtype=dtype,
                         device=str(device), batch_size=batch, workers=workers, limit=limit, progress=False)
        wall_us = (time.perf_counter() - start) * 1e6
    kernels, copies = device_intervals(prof.events())
    return {"profiled_images": result.num_valid, "profiled_extract_s": wall_us / 1e6, "kernels": len(kernels),
            "gpu_busy": busy_fraction(kernels, wall_us),
            "gpu_busy_with_copies": busy_fraction(kernels + copies, wall_us)}


def extraction_rows(args, device, cache_dir: Path) -> list[dict]:
    """`extract` end to end vs the bare encoder on the same decoded images (``_common.extract_vs_encoder``,
    alternating), and on CUDA the GPU busy fraction of one more, profiled, `extract` run."""
    preset = "tiny" if args.quick else "sail-7b"
    ckpt = cached_checkpoint(cache_dir, preset, dtype="bfloat16", num_hidden_layers=args.extract_layers)
    dtype = "float32" if device.type == "cpu" else "bfloat16"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        write_noise_jpegs(images, args.extract_images)
        for res in args.resolutions:
            compared = extract_vs_encoder(ckpt, images, Path(tmp), resolution=res, dtype=dtype, device=device,
                                          batch=args.batch, workers=[args.workers], rounds=args.extract_rounds)
            row = {**compared["rows"][0], "features_max_abs_diff": compared["features_max_abs_diff"],
                   "times_s": compared["times_s"], "gpu_busy": None}
            if device.type == "cuda":
                row.update(profiled_extract(ckpt, images, Path(tmp) / f"profiled-{res}", res=res, dtype=dtype,
                                            device=device, batch=args.batch, workers=args.workers,
                                            limit=args.profile_images))
            rows.append(row)
    return rows


def run(args) -> dict:
    from sail_vision.checkpoint_generator import preset_config
    from sail_vision.devices import resolve_device

    device = resolve_device(args.device)
    if device.type != "cuda" and not args.quick:
        from sail_vision.errors import InputError

        raise InputError(f"--device {device}: SAIL-7B shapes need a GPU (28 GB of float32 weights); use --quick "
                         f"to check the script on this machine")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    cfg = preset_config("tiny" if args.quick else "sail-7b")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    peak = peak_tflops(device, args.peak_tflops)
    enc = encoder_rows(cfg, device, dtype, args.resolutions, args.batch, args.rounds, peak)
    print_table(enc, ["resolution", "layer", "batch", "dtype", "images_s", "tflop_s", "of_peak", "peak_gpu_gb"],
                title=f"SAIL encoder, {'tiny' if args.quick else 'SAIL-7B'} shapes, random weights, on {device}")
    packed = packed_rows(cfg, device, dtype, args.resolutions, args.batch, args.rounds, peak)
    print_table(packed, ["resolution", "layer", "batching", "kernel", "images", "images_s", "tflop_s", "of_peak"],
                title="mixed grids (native resolution): packed vs grouped")
    ext = extraction_rows(args, device, Path(args.cache_dir))
    print_table(ext, ["resolution", "images", "workers", "extract_images_s", "encoder_images_s", "extract_vs_encoder",
                      "paired_ratio", "gpu_busy", "gpu_busy_with_copies", "profiled_extract_s"],
                title=f"extract vs the bare encoder ({args.extract_layers} blocks; median of {args.extract_rounds} "
                      f"alternating rounds; gpu_busy: union of kernel times / wall of one separate profiled run)")
    return {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "peak_tflops": peak, "encoder": enc, "packed": packed, "extract": ext}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny shapes and few images (checks the script)")
    parser.add_argument("--resolutions", type=int, nargs="+", default=None, help="image sizes in pixels")
    parser.add_argument("--batch", type=int, default=16, help="images per forward")
    parser.add_argument("--rounds", type=int, default=5, help="timed forwards per case (median)")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the GPU's dense bf16 peak (default: looked up by GPU name)")
    parser.add_argument("--extract-layers", type=int, default=4, help="blocks of the checkpoint `extract` reads")
    parser.add_argument("--extract-images", type=int, default=256, help="images `extract` encodes")
    parser.add_argument("--workers", type=int, default=4, help="`extract` decode workers")
    parser.add_argument("--extract-rounds", type=int, default=3,
                        help="alternating rounds of `extract` and the bare encoder (after one warm-up round)")
    parser.add_argument("--profile-images", type=int, default=None,
                        help="images of the separate profiled `extract` run giving gpu_busy (default: all)")
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "sail-bench-cache"),
                        help="where the random checkpoint is written once and reused")
    args = parser.parse_args(argv)
    if args.quick:
        args.resolutions = args.resolutions or [16, 32]
        args.batch, args.rounds, args.extract_images, args.workers, args.extract_rounds = 4, 2, 8, 0, 1
    args.resolutions = args.resolutions or [224, 448]
    run_and_save(parser, lambda: run(args), "bench_gpu", args.quick)


if __name__ == "__main__":
    main()
