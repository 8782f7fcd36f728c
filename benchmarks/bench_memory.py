"""Peak memory of loading SAIL-7B with ``max_layer`` and encoding one 224 px image.

For each ``max_layer`` a fresh Python process loads a SAIL-7B-shaped bfloat16 random checkpoint
(written once by the generator, ~14.5 GB, cached under --cache-dir) with
``SailEncoder.from_pretrained(..., dtype='bfloat16', max_layer=k)``, encodes one 224 x 224 image
(7 x 7 patches) keeping layer k, and reports its peak RSS (VmHWM). The yardstick is the bytes of
the weights that layer range needs (``SailCheckpoint.weight_bytes`` of blocks 1..k, the patch
embedding, the final norm, plus the six vision-token embedding rows actually read). Target: peak
RSS <= 1.15 x needed + 1 GB. The RSS of a process that has only imported torch and sail_vision
is reported too.

If the checkpoint is not cached yet and the disk has under 20 GB free, the benchmark is skipped
with a message (and a JSON saying so).

    python benchmarks/bench_memory.py                 # SAIL-7B, max_layer 8 16 32
    python benchmarks/bench_memory.py --quick         # tiny checkpoint, seconds (CI)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_CACHE_DIR, cached_checkpoint, free_disk_bytes, print_table, run_and_save  # noqa: E402

GB = 1024 ** 3
MIN_FREE_BYTES = 20 * GB


def needed_weight_bytes(checkpoint: Path, max_layer: int) -> int:
    """Bytes of the tensors an encoder with blocks 1..max_layer reads (six embedding rows only)."""
    from sail_vision.checkpoint import VISION_TOKENS, SailCheckpoint, expected_tensor_shapes

    ckpt = SailCheckpoint(checkpoint)
    names = [n for n in expected_tensor_shapes(ckpt.config, max_layer) if n != "model.embed_tokens.weight"]
    table = ckpt.weight_bytes(["model.embed_tokens.weight"])
    rows = table // ckpt.config.vocab_size * len(VISION_TOKENS)
    return ckpt.weight_bytes(names) + rows


def child(spec: dict) -> None:
    """Runs in the fresh process: import, load, encode, print a JSON line."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import peak_rss_bytes

    import torch

    from sail_vision import SailEncoder

    import_rss = peak_rss_bytes()
    start = time.perf_counter()
    encoder = SailEncoder.from_pretrained(spec["checkpoint"], dtype=spec["dtype"], max_layer=spec["max_layer"])
    load_s = time.perf_counter() - start
    load_rss = peak_rss_bytes()
    p = encoder.patch_size
    grid = spec["px"] // p
    patches = torch.randn(1, grid, grid, 3, p, p, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    out = encoder.encode_patches(patches, [spec["max_layer"]])
    encode_s = time.perf_counter() - start
    state = out.hidden_states[spec["max_layer"]]
    if not torch.isfinite(state.float()).all():
        raise SystemExit("non-finite hidden states")
    print(json.dumps({"import_rss": import_rss, "after_load_rss": load_rss, "peak_rss": peak_rss_bytes(),
                      "load_s": load_s, "encode_s": encode_s, "hidden_shape": list(state.shape)}))


def measure(checkpoint: Path, max_layer: int, dtype: str, px: int) -> dict:
    spec = {"checkpoint": str(checkpoint), "max_layer": max_layer, "dtype": dtype, "px": px}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"the process for max_layer {max_layer} failed: {proc.stderr.strip()[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(args) -> dict:
    if args.quick:
        tmp = tempfile.TemporaryDirectory()
        from sail_vision.checkpoint_generator import make_checkpoint

        checkpoint = make_checkpoint(Path(tmp.name) / "tiny", "tiny", seed=0, dtype=args.dtype)
        layers, px = args.layers or [1, 4], 32
    else:
        from sail_vision.checkpoint_generator import preset_config

        cache = Path(args.cache_dir)
        target = cache / f"{args.preset}-{args.dtype}-seed0"
        if not target.is_dir() and free_disk_bytes(cache) < MIN_FREE_BYTES:
            message = (f"skipped: writing the {args.preset} checkpoint needs ~15 GB and {cache} has only "
                       f"{free_disk_bytes(cache) / GB:.1f} GB free (< 20 GB); free space or pass --cache-dir")
            print(message)
            return {"skipped": message, "rows": []}
        checkpoint = cached_checkpoint(cache, args.preset, dtype=args.dtype)
        layers = args.layers or [8, 16, preset_config(args.preset).num_hidden_layers]
        px = 224
    rows = []
    from sail_vision.checkpoint import SailCheckpoint
    from sail_vision.layer_indices import resolve_layer_indices

    layers = resolve_layer_indices(layers, SailCheckpoint(checkpoint).config.num_hidden_layers)
    for k in layers:
        needed = needed_weight_bytes(checkpoint, k)
        got = measure(checkpoint, k, args.dtype, px)
        budget = 1.15 * needed + GB
        rows.append({"max_layer": k, "needed_gb": needed / GB, "peak_rss_gb": got["peak_rss"] / GB,
                     "budget_gb": budget / GB, "ratio": got["peak_rss"] / needed,
                     "met": got["peak_rss"] <= budget, "import_rss_gb": got["import_rss"] / GB,
                     "after_load_rss_gb": got["after_load_rss"] / GB, "load_s": got["load_s"],
                     "encode_s": got["encode_s"], "needed_bytes": needed, "peak_rss_bytes": got["peak_rss"]})
        print(f"max_layer {k}: peak RSS {got['peak_rss'] / GB:.2f} GB, needed {needed / GB:.2f} GB", flush=True)
    print_table(rows, ["max_layer", "needed_gb", "peak_rss_gb", "budget_gb", "met", "import_rss_gb",
                       "load_s", "encode_s"], title=f"peak RSS, {px} px image, {args.dtype}")
    return {"checkpoint": str(checkpoint), "dtype": args.dtype, "px": px, "rows": rows,
            "target": "peak_rss <= 1.15 * needed + 1 GiB"}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny checkpoint, max_layer 1 4, 32 px: seconds (CI)")
    parser.add_argument("--preset", default="sail-7b", help="checkpoint_generator preset for the full run")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"],
                        help="dtype of the checkpoint on disk and of the encoder")
    parser.add_argument("--layers", nargs="+", type=int, default=None,
                        help="max_layer values (default 8 16 32; quick: 1 4)")
    parser.add_argument("--cache-dir", default=str(DEFAULT_CACHE_DIR),
                        help="where the random checkpoint is written once and reused (env SAIL_BENCH_CACHE)")
    parser.add_argument("--out-name", default="bench_memory", help="results/<name>[-quick].json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(json.loads(args.child))
        return
    run_and_save(parser, lambda: run(args), args.out_name, args.quick)


if __name__ == "__main__":
    main()
