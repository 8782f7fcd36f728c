"""``sail-vision info``: describe a SAIL checkpoint without loading its weights."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser("info", help="show a checkpoint's architecture, vision token ids and sizes",
                              description="Read config.json, the tokenizer and the safetensors headers of a "
                                          "SAIL checkpoint and print what sail-vision sees. Reads no weights; a "
                                          "hub id fetches only config.json, the tokenizer and the weight index.")
    p.add_argument("checkpoint", help="SAIL checkpoint: a local folder or a Hugging Face hub id ORG/NAME[@REVISION] "
                                      "(a local folder of that name wins)")
    p.add_argument("--max-layer", type=int, default=None,
                   help="also report the files and bytes an encoder loaded with this max_layer reads (default: none)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import open_checkpoint
    from ..layer_indices import resolve_layer_indices

    ckpt = open_checkpoint(args.checkpoint, max_layer=args.max_layer, weights=False)
    cfg = ckpt.config
    # every check before the first line of the report: an error prints only itself
    max_layer = None if args.max_layer is None else resolve_layer_indices([args.max_layer], cfg.num_hidden_layers)[0]
    print(f"checkpoint: {ckpt.path}")
    if ckpt.repo_id is not None:
        print(f"hub repo: {ckpt.repo_id} at commit {ckpt.revision}")
    for key, value in cfg.to_dict().items():
        print(f"  {key}: {value}")
    print(f"  head_dim: {cfg.head_dim}")
    print(f"vision token ids: {ckpt.token_ids}")
    files = sorted(set(ckpt.weight_map.values()))
    absent = ckpt.absent_files
    if absent:
        print(f"weights: {len(files)} file(s), {len(files) - len(absent)} of them downloaded")
    else:
        print(f"weights on disk: {ckpt.weight_bytes(ckpt.weight_map) / 1e9:.3f} GB in {len(files)} file(s)")
    if max_layer is not None:
        tensors = ckpt.encoder_tensors(max_layer)
        k = max_layer
        needed = ckpt.encoder_files(max_layer)
        missing = [f for f in needed if f in absent]
        if missing:
            print(f"an encoder with max_layer={k} reads {len(needed)} file(s) ({', '.join(f.name for f in needed)}); "
                  f"{len(missing)} not downloaded yet")
        else:
            names = [n for n in tensors if n != "model.embed_tokens.weight"]
            print(f"an encoder with max_layer={k} reads {ckpt.weight_bytes(names) / 1e9:.3f} GB "
                  f"(plus 6 embedding rows) from {len(needed)} file(s)")
    return 0

