"""Benchmark native-resolution batching: packed vs grouped vs one image at a time.

Images follow an ImageNet-val-like spread (short side 300-500 px, aspect 0.5-2.0, log-uniform),
encoded at native resolution with a random checkpoint, through the same batch plans ``extract``
uses: ``packed`` (``plan_packed_batches``: token budget = batch size x the longest sequence),
``grouped`` (``plan_batches``: up to batch-size images of one patch grid) and ``single``. The three
alternate within one run (median of the rounds). Reported per mode: images/s, forward passes,
images and tokens per forward, padding fraction (0 for all three: packing and same-grid groups pad
nothing; ``pad_to_longest`` shows what padding batches of ``--batch-size`` to their longest image
would waste), and the fraction of ``torch.matmul``'s rate. Before timing, packed features are
checked against one-at-a-time (max abs difference, float32).

    python benchmarks/bench_packing.py [--quick] [--preset small] [--images 48] [--dtypes float32 bfloat16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_CACHE_DIR, alternate, cached_checkpoint, median, print_table, run_and_save  # noqa: E402


def imagenet_like_sizes(count: int, seed: int) -> list[tuple[int, int]]:
    """(width, height): short side uniform in 300-500 px, aspect ratio log-uniform in 0.5-2.0."""
    rng = np.random.default_rng(seed)
    sizes = []
    for _ in range(count):
        short = int(rng.integers(300, 501))
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
        long = int(round(short * max(aspect, 1 / aspect)))
        sizes.append((long, short) if aspect >= 1 else (short, long))
    return sizes


def flops(cfg, grids, blocks: int) -> float:
    """Analytic FLOPs (2 x multiply-adds) of the matrix products, attention per image (block-diagonal)."""
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    total = 0.0
    for nh, nw in grids:
        n = nh * nw
        seq = n + 2
        per_block = 2 * seq * d * (q + 2 * kv) + 2 * seq * q * d + 4 * seq * seq * q + 6 * seq * d * f
        total += 2 * n * cfg.patch_dim * d + blocks * per_block
    return total


def matmul_rate(cfg, dtype, rows: int, repeats: int = 3) -> float:
    """FLOP/s of torch.matmul on (rows x hidden) @ (hidden x intermediate) in ``dtype``."""
    a = torch.randn(rows, cfg.hidden_size).to(dtype)
    b = torch.randn(cfg.hidden_size, cfg.intermediate_size).to(dtype)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        times.append(time.perf_counter() - start)
    return 2.0 * rows * cfg.hidden_size * cfg.intermediate_size / median(times)


def run(args) -> dict:
    from sail_vision.encoder import SailEncoder
    from sail_vision.extraction.loader import default_token_budget, plan_batches, plan_packed_batches
    from sail_vision.preprocessing import Preprocess

    torch.set_num_threads(args.threads)
    ckpt = cached_checkpoint(Path(args.cache_dir), args.preset)
    sizes = imagenet_like_sizes(args.images, args.seed)
    rng = np.random.default_rng(args.seed)
    rows, cells = [], []
    for dtype in args.dtypes:
        encoder = SailEncoder.from_pretrained(ckpt, dtype=dtype)
        pre = Preprocess.create(encoder.patch_size, None, args.max_tokens)
        items = []
        for w, h in sizes:
            from PIL import Image

            image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            items.append(pre.to_patches(pre.pixels(image)[None])[0])
        grids = np.array([item.shape[:2] for item in items])
        budget = default_token_budget(grids, args.batch_size, 2)
        plans = {"packed": plan_packed_batches(grids, budget, 2), "grouped": plan_batches(grids, args.batch_size),
                 "single": [np.array([i]) for i in range(len(items))]}

        def runner(plan, packed):
            def go():
                for batch in plan:
                    chosen = [items[i] for i in batch]
                    if packed:
                        encoder.encode_patches(chosen, [-1], packed_output=True, max_batch_tokens=budget)
                    else:
                        encoder.encode_patches(torch.stack(chosen), [-1])
            return go

        check = encoder.encode_patches(items[:6], [-1], packed_output=True)
        worst = max(float((check.image_states(-1, i) - encoder.encode_patches(items[i], [-1]).hidden_states[
            encoder.num_layers][0]).abs().max()) for i in range(6))
        times = alternate({name: runner(plan, name == "packed") for name, plan in plans.items()}, args.repeats,
                          warmup=1)
        work = flops(encoder.config, [tuple(g) for g in grids], encoder.num_blocks)
        lengths = grids[:, 0] * grids[:, 1] + 2
        padded = sum(len(b) * int(lengths[b].max()) for b in np.array_split(np.arange(len(items)),
                                                                        max(1, len(items) // args.batch_size)))
        rate = matmul_rate(encoder.config, encoder.dtype, min(int(budget), 4096))
        for name, plan in plans.items():
            seconds = median(times[name])
            rows.append({"dtype": dtype, "mode": name, "img/s": round(len(items) / seconds, 2),
                         "forwards": len(plan), "img/forward": round(len(items) / len(plan), 1),
                         "tokens/forward": int(lengths.sum() / len(plan)), "padding": 0.0,
                         "of_matmul": round(work / seconds / rate, 2)})
        base = {r["mode"]: r["img/s"] for r in rows if r["dtype"] == dtype}
        cells.append({"dtype": dtype, "packed_vs_grouped": round(base["packed"] / base["grouped"], 2),
                      "packed_vs_single": round(base["packed"] / base["single"], 2),
                      "distinct_grids": int(len({tuple(g) for g in grids})), "token_budget": int(budget),
                      "pad_to_longest_padding": round(1 - lengths.sum() / padded, 3),
                      "packed_vs_single_max_abs_diff": worst, "matmul_gflops": round(rate / 1e9, 1)})
    print_table(rows, list(rows[0]), title=f"native resolution, preset {args.preset}, {args.images} images")
    print_table(cells, list(cells[0]), title="ratios")
    return {"preset": args.preset, "images": args.images, "batch_size": args.batch_size, "threads": args.threads,
            "repeats": args.repeats, "rows": rows, "summary": cells}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny preset, 12 small images, seconds (CI)")
    parser.add_argument("--preset", default="small", help="checkpoint_generator preset (default: small)")
    parser.add_argument("--images", type=int, default=48, help="number of images (default: 48)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="grouped batch size; packed budget = this x the longest sequence (default: 16)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="native-resolution patch cap (default: 4096)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"],
                        help="compute dtypes (default: float32 bfloat16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per mode (default: 3)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="seed of sizes and pixels (default: 0)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR), help="where random checkpoints are kept")
    args = parser.parse_args(argv)
    if args.quick:
        args.preset, args.images, args.repeats, args.dtypes, args.max_tokens = "tiny", 12, 1, ["float32"], 64
    run_and_save(parser, lambda: run(args), "bench_packing", args.quick)


if __name__ == "__main__":
    main()
