"""``sail-vision info``: describe a SAIL checkpoint without loading its weights."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="show a checkpoint's architecture, vision token ids and sizes",
                              description="Read config.json, the tokenizer and the safetensors headers of a "
                                          "SAIL checkpoint and print what sail-vision sees. Reads no weights.")
    p.add_argument("checkpoint", help="SAIL checkpoint folder")
    p.add_argument("--max-layer", type=int, default=None,
                   help="also report the bytes an encoder loaded with this max_layer reads")
    p.set_defaults(func=run)


def run(args) -> int:
    import os

    from ..checkpoint import SailCheckpoint, expected_tensor_shapes
    from ..layer_indices import resolve_layer_indices

    ckpt = SailCheckpoint(os.path.expanduser(args.checkpoint))
    cfg = ckpt.config
    # every check before the first line of the report: an error prints only itself
    max_layer = None if args.max_layer is None else resolve_layer_indices([args.max_layer], cfg.num_hidden_layers)[0]
    print(f"checkpoint: {ckpt.path}")
    for key, value in cfg.to_dict().items():
        print(f"  {key}: {value}")
    print(f"  head_dim: {cfg.head_dim}")
    print(f"vision token ids: {ckpt.token_ids}")
    total = ckpt.weight_bytes(ckpt.weight_map)
    print(f"weights on disk: {total / 1e9:.3f} GB in {len(set(ckpt.weight_map.values()))} file(s)")
    if max_layer is not None:
        names = [n for n in expected_tensor_shapes(cfg, max_layer) if n != "model.embed_tokens.weight"]
        print(f"an encoder with max_layer={max_layer} reads {ckpt.weight_bytes(names) / 1e9:.3f} GB "
              f"(plus 6 embedding rows)")
    return 0
