"""GPU figures: SAIL-7B-shaped encoder throughput, its fraction of the dense peak, peak GPU memory,
and `extract` end to end against the bare encoder on the same images.

The encoder part builds SAIL-7B's shapes (32 blocks x 4096, 32 heads, 8 key/value heads, MLP 14336,
patch 32) with random weights straight on the GPU: no 15 GB checkpoint is written. The extraction
part writes a SAIL-7B-shaped checkpoint with fewer blocks (``--extract-layers``, default 4) so the
disk cost stays small, and compares `extract`'s images/s with the bare encoder's on the same decoded
images: their ratio is the share of time the GPU does the encoder's work during `extract` (the rest
is decode, upload, copy-back and writing that the pipeline did not hide).

    python benchmarks/bench_gpu.py                   # on a CUDA machine (a few minutes)
    python benchmarks/bench_gpu.py --quick           # tiny shapes, any device (checks the script)
    python benchmarks/bench_gpu.py --peak-tflops 989 # state the GPU's dense bf16 peak yourself

Dense bf16 peaks known by name (TFLOP/s, no sparsity): H100/H200 SXM 989, H100 PCIe 756, A100 312,
L40S 362, A10 125. FLOPs per image are analytic (every linear layer and both attention products).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cached_checkpoint, median, print_table, run_and_save  # noqa: E402

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


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def extraction_rows(args, device, cache_dir: Path) -> list[dict]:
    """`extract` end to end vs the bare encoder on the same decoded images."""
    import numpy as np
    from PIL import Image

    from sail_vision import SailEncoder
    from sail_vision.extraction import extract
    from sail_vision.preprocessing import Preprocess

    preset = "tiny" if args.quick else "sail-7b"
    ckpt = cached_checkpoint(cache_dir, preset, dtype="bfloat16", num_hidden_layers=args.extract_layers)
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images"
        images.mkdir()
        for i in range(args.extract_images):
            w, h = int(rng.integers(300, 500)), int(rng.integers(300, 500))
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(images / f"{i:05d}.jpg")
        for res in args.resolutions:
            dtype = "float32" if device.type == "cpu" else "bfloat16"
            start = time.perf_counter()
            result = extract(ckpt, images, Path(tmp) / f"out-{res}", layers=[-1], pools=["mean"], resolution=res,
                             dtype=dtype, device=str(device), batch_size=args.batch, workers=args.workers,
                             progress=False)
            extract_s = time.perf_counter() - start
            encoder = SailEncoder.from_pretrained(ckpt, dtype=dtype, device=device)
            pre = Preprocess.create(encoder.patch_size, res)
            pixels = torch.stack([pre.pixels(str(p)) for p in sorted(images.iterdir())])
            synchronize(device)
            start = time.perf_counter()
            for i in range(0, len(pixels), args.batch):
                encoding = encoder.encode_patches(pre.to_patches(pixels[i:i + args.batch].to(device)), [-1])
                encoding.pooled(encoder.num_layers, "mean").cpu()
            synchronize(device)
            bare_s = time.perf_counter() - start
            rows.append({"resolution": res, "images": result.num_valid, "extract_images_s": result.num_valid / extract_s,
                         "encoder_images_s": len(pixels) / bare_s, "extract_vs_encoder": bare_s / extract_s})
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
    ext = extraction_rows(args, device, Path(args.cache_dir))
    print_table(ext, ["resolution", "images", "extract_images_s", "encoder_images_s", "extract_vs_encoder"],
                title=f"extract vs the bare encoder ({args.extract_layers} blocks)")
    return {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "peak_tflops": peak, "encoder": enc, "extract": ext}


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
    parser.add_argument("--cache-dir", default=str(Path(tempfile.gettempdir()) / "sail-bench-cache"),
                        help="where the random checkpoint is written once and reused")
    args = parser.parse_args(argv)
    if args.quick:
        args.resolutions = args.resolutions or [16, 32]
        args.batch, args.rounds, args.extract_images, args.workers = 4, 2, 8, 0
    args.resolutions = args.resolutions or [224, 448]
    run_and_save(parser, lambda: run(args), "bench_gpu", args.quick)


if __name__ == "__main__":
    main()
