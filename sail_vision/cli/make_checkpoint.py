"""``sail-vision make-checkpoint``: write a seeded random checkpoint in SAIL's format."""

from __future__ import annotations

import argparse

from ..errors import InputError


def _override(text: str):
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r}: expected FIELD=VALUE, e.g. num_hidden_layers=2")
    try:
        parsed = float(value) if "." in value or "e" in value.lower() else int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: VALUE must be a number") from None
    return key, parsed


def register(subparsers) -> None:
    from ..checkpoint_generator import PRESETS

    p = subparsers.add_parser(
        "make-checkpoint", help="write a random SAIL-format checkpoint (for tests, demos, benchmarks)",
        description="Write a seeded random checkpoint in SAIL's exact format: config.json, safetensors "
                    "(sharded when large) with the upstream tensor names, and a tokenizer holding the six "
                    "vision tokens. Presets: " + "; ".join(
                        f"{name}: {cfg['num_hidden_layers']} layers x {cfg['hidden_size']}, patch "
                        f"{cfg['vision_patch_size']}" for name, cfg in PRESETS.items()))
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model shape (default: tiny)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weight dtype on disk (default: float32; SAIL ships bfloat16)")
    p.add_argument("--shard-size-gb", type=float, default=2.0,
                   help="largest shard in GiB; more weights than that are split into shards with "
                        "model.safetensors.index.json (default: 2.0)")
    p.add_argument("--set", dest="overrides", type=_override, action="append", default=[],
                   metavar="FIELD=VALUE",
                   help="override a config field, e.g. --set num_hidden_layers=2 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint_generator import make_checkpoint

    if args.shard_size_gb <= 0:
        raise InputError(f"--shard-size-gb must be positive, got {args.shard_size_gb}")
    out = make_checkpoint(args.out, args.preset, seed=args.seed, dtype=args.dtype,
                          max_shard_bytes=int(args.shard_size_gb * 1024**3), overwrite=args.overwrite,
                          progress=True, **dict(args.overrides))
    print(f"wrote a random {args.preset} SAIL checkpoint to {out}")
    return 0
