"""The attentive probe's grid against the linear grid on the same features: steps/s and memory.

Synthetic class-clustered patch tokens (rows, P, D) are written as float16 .npy (memory-mapped, like
`sail-vision extract --pool patch` output); the linear grid reads their mean over P (computed once, as
`--pool mean` would store it), the attentive grid reads the tokens. Both grids are trained with the code
`sail-vision probe` runs (``linear.train_grid``, ``attentive.train_heads``) and evaluated on the training
rows. Reported per grid: seconds, optimisation steps per second (one step = one mini-batch for the whole
grid), head-steps per second, the peak CUDA memory on a GPU, the attentive head's parameter count and its
activation estimate per step (one head at a time: B x P x D floats for the normalised tokens, keys and
values each). Prints a table and saves JSON under benchmarks/results/.

    python benchmarks/bench_attentive.py --quick          # seconds, for CI
    python benchmarks/bench_attentive.py                  # SAIL-like widths; minutes on 2 cores
    python benchmarks/bench_attentive.py --device cuda
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss_bytes, write_results  # noqa: E402

from sail_vision.probes import FeatureInput, load_arrays
from sail_vision.probes.attentive import AttentiveConfig, head_logits, train_heads
from sail_vision.probes.linear import LinearConfig, evaluate_grid, train_grid
from sail_vision.probes.metrics import TopkCounter


def make_tokens(folder: Path, rows: int, tokens: int, dim: int, classes: int, seed: int = 0):
    """(tokens, pooled) ProbeData: class-clustered float16 tokens on disk and their float16 mean."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    path = folder / f"tokens_{rows}_{tokens}_{dim}.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, tokens, dim))
    pooled = np.empty((rows, dim), np.float16)
    for start in range(0, rows, 1024):
        stop = min(rows, start + 1024)
        block = centres[labels[start:stop]][:, None, :] * 0.5 + rng.normal(size=(stop - start, tokens, dim))
        out[start:stop] = block
        pooled[start:stop] = block.mean(1)
    out.flush()
    del out
    np.save(folder / "pooled.npy", pooled)
    return load_arrays(path, labels, name="tok"), load_arrays(folder / "pooled.npy", labels, name="mean")


def peak_cuda(device: str) -> int | None:
    return int(torch.cuda.max_memory_allocated(device)) if device.startswith("cuda") else None


def reset_cuda(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small case, seconds (CI)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    args = parser.parse_args(argv)
    from sail_vision.devices import resolve_device

    device = str(resolve_device(args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    # (rows, tokens, dim, classes, epochs, batch, attention heads)
    case = (512, 16, 64, 10, 1, 128, 4) if args.quick else (4096, 64, 512, 100, 1, 256, 8)
    rows, tokens, dim, classes, epochs, batch, heads = case
    lrs, wds = [1e-4, 3e-4, 1e-3, 3e-3], [0.0, 0.05]
    all_rows = np.arange(rows)
    steps = math.ceil(rows / batch) * epochs
    with tempfile.TemporaryDirectory() as tmp:
        token_data, pooled_data = make_tokens(Path(tmp), rows, tokens, dim, classes)
        linear = LinearConfig(lrs=lrs, weight_decays=wds, epochs=epochs, batch_size=batch, device=device)
        reset_cuda(device)
        started = time.perf_counter()
        grid = train_grid(pooled_data, [FeatureInput(("mean",))], classes, all_rows, linear, progress=False)
        linear_top1 = max(evaluate_grid(grid, pooled_data, all_rows)["mean"]["top1"])
        linear_s = time.perf_counter() - started
        linear_peak = peak_cuda(device)
        attentive = AttentiveConfig(lrs=lrs, weight_decays=wds, epochs=epochs, batch_size=batch, num_heads=heads,
                                    device=device)
        reset_cuda(device)
        started = time.perf_counter()
        modules = train_heads(token_data, FeatureInput(("tok",)), classes, all_rows, attentive, attentive.grid,
                              progress=False)
        attentive_top1 = max(head_logits(modules, token_data, FeatureInput(("tok",)), all_rows, device, 1024,
                                         TopkCounter()).percent()["top1"])
        if device.startswith("cuda"):
            torch.cuda.synchronize(device)
        attentive_s = time.perf_counter() - started
        attentive_peak = peak_cuda(device)
    points = len(attentive.grid)
    result = {"rows": rows, "tokens": tokens, "dim": dim, "classes": classes, "epochs": epochs, "batch_size": batch,
              "attention_heads": heads, "grid_points": points, "steps": steps,
              "linear": {"seconds": round(linear_s, 4), "steps_per_s": round(steps / linear_s, 2),
                         "head_steps_per_s": round(steps * points / linear_s, 2), "peak_cuda_bytes": linear_peak,
                         "parameters_per_head": dim * classes + classes, "train_top1": round(linear_top1, 2)},
              "attentive": {"seconds": round(attentive_s, 4), "steps_per_s": round(steps / attentive_s, 2),
                            "head_steps_per_s": round(steps * points / attentive_s, 2),
                            "peak_cuda_bytes": attentive_peak,
                            "parameters_per_head": sum(p.numel() for p in modules[0].parameters()),
                            "activation_bytes_per_step_estimate": 3 * batch * tokens * dim * 4,
                            "train_top1": round(attentive_top1, 2)}}
    result["attentive_over_linear_time"] = round(attentive_s / linear_s, 2)
    print(f"{'grid':>10} {'points':>6} {'seconds':>8} {'steps/s':>8} {'head-steps/s':>12} {'params/head':>11}")
    for name in ("linear", "attentive"):
        r = result[name]
        print(f"{name:>10} {points:>6} {r['seconds']:>8.3f} {r['steps_per_s']:>8.2f} {r['head_steps_per_s']:>12.2f} "
              f"{r['parameters_per_head']:>11}")
    suffix = "" if device == "cpu" else "-" + device.replace(":", "")
    out = write_results(f"bench_attentive{suffix}", {"case": result, "device": device,
                                                     "peak_rss_bytes": peak_rss_bytes(),
                                                     "gpu": torch.cuda.get_device_name(device)
                                                     if device.startswith("cuda") else None,
                                                     "torch_threads": torch.get_num_threads()}, args.quick)
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
