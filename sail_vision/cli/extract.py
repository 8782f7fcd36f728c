"""``sail-vision extract``: features of a whole dataset into memory-mapped .npy files."""

from __future__ import annotations

import argparse
import os
import sys

EPILOG = """examples:
  sail-vision extract --checkpoint SAIL-7B-PT --images imagenet --split val \\
      --labels-file val.txt --layers 16 -1 --pool mean end --resolution 224 --out feats/val
  sail-vision extract --checkpoint C --images ADE20K --split validation --pool patch --out feats/ade
  torchrun --nproc_per_node=8 -m sail_vision extract --checkpoint C --images imagenet --split train --out feats/train

Outputs (in --out): layer-{k}_{pool}.npy per (layer, pool), valid.npy, labels.npy (when known),
masks.npy (segmentation sources), paths.txt, failures.jsonl, manifest.json. Exit status: 0 when done, 1 when some images failed
(unless --allow-failures), 2 on bad options or an unusable --out. See docs/extraction.md."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def register(subparsers) -> None:
    from ..extraction.parts import DEFAULT_PART_SIZE
    from ..outputs import POOLS

    p = subparsers.add_parser(
        "extract", help="extract features of many images to .npy files (resumable, multi-GPU)",
        description="Encode every image of a folder, an ImageNet or ADE20K tree, or a list file, and write the "
                    "chosen layers' features as one memory-mapped .npy per (layer, pool). Interrupted runs "
                    "continue with --resume; under torchrun the ranks share the work.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("what to extract")
    g.add_argument("--checkpoint", required=True,
                   help="SAIL checkpoint: a local folder or a Hugging Face hub id ORG/NAME[@REVISION], fetched with "
                        "only the shards the --layers need (required)")
    g.add_argument("--images", required=True, nargs="+", metavar="PATH",
                   help="a folder (recursive), an ImageNet split or root, an ADE20K folder, a .txt/.csv list "
                        "of paths with optional labels, image files, WebDataset tar shards "
                        "('train-{000000..000146}.tar', 'pipe:CMD', a folder of .tar files) or Parquet files "
                        "as Hugging Face stores them; each shard is one part (required)")
    g.add_argument("--layout", default="auto",
                   choices=["auto", "folder", "imagenet", "ade20k", "nyu", "pairs", "list", "webdataset", "parquet"],
                   help="how to read --images (default: auto, guessed from the names and folder structure)")
    g.add_argument("--split", default=None,
                   help="split folder: train/val for ImageNet roots, training/validation for ADE20K, train/test "
                        "for --layout nyu (default: none)")
    g.add_argument("--labels-file", default=None,
                   help="'path label' list labelling a flat ImageNet-style folder such as val (default: none)")
    g.add_argument("--masks", default=None, metavar="DIR",
                   help="folder of label-map masks paired with --images by relative path without extension (the "
                        "pairs layout); each image's mask is stored in masks.npy on its preprocessed pixels "
                        "(ADE20K trees pair their annotations themselves) (default: none)")
    g.add_argument("--depths", default=None, metavar="DIR",
                   help="folder of depth maps paired with --images by relative path without extension (the pairs "
                        "layout): 16-bit PNGs (--depth-scale values per metre, 0 = no measurement) or float .npy "
                        "in metres; stored as float32 metres in masks.npy on the preprocessed pixels, resized "
                        "nearest; --layout nyu pairs images/<split> with annotations/<split> itself (default: none)")
    g.add_argument("--depth-scale", type=float, default=None, metavar="V",
                   help="16-bit depth PNG values per metre, with --depths or --layout nyu (default: 1000, i.e. "
                        "millimetres, as NYUv2; KITTI uses 256)")
    g.add_argument("--reduce-zero-label", action="store_true", default=None,
                   help="with --masks: mmseg's reduce_zero_label (mask 0 -> 255 ignored, v -> v - 1), as ADE20K "
                        "always has (default: mask values are the labels)")
    g.add_argument("--allow-paths-under", action="append", default=None, metavar="DIR",
                   help="a folder (~ expanded; repeatable) that Parquet rows whose image is a file path may read "
                        "from, besides the Parquet file's own folder; other paths (absolute, '..', links leading "
                        "out) are recorded outside-dataset failures (default: none)")
    g.add_argument("--layers", nargs="+", default=["-1"], metavar="K",
                   help="hidden-state indices: 0 = embeddings, L = last (final norm); negative count from the "
                        "end; several allowed, e.g. --layers 8 16 -1 or 8,16,-1 (default: -1)")
    g.add_argument("--pool", nargs="+", default=["mean"], choices=POOLS, metavar="POOL",
                   help="one or more of: patch (all patch tokens), mean (mean of patches), cls (the "
                        "<|vis_cls|> token, appended), end (the </vision> token) (default: mean)")
    g.add_argument("--norm", action="store_true",
                   help="apply the model's final RMSNorm to every extracted layer (the last layer always has it)")
    g.add_argument("--limit", type=_positive_int, default=None, help="only the first N images (default: all)")
    g = p.add_argument_group("preprocessing")
    g.add_argument("--resolution", default="native",
                   help="'native' (upstream's aspect-keeping resize, multiples of the patch size), S (shorter "
                        "side to S then an S x S center crop), or HxW (default: native)")
    g.add_argument("--max-tokens", type=_positive_int, default=4096,
                   help="patch cap at native resolution; larger images are scaled down (default: 4096)")
    g.add_argument("--max-pixels", type=_non_negative_int, default=89_478_485,
                   help="decompression-bomb limit: images with more pixels are skipped as failures; 0 = no "
                        "limit (default: 89478485, PIL's)")
    g.add_argument("--jpeg-draft", action="store_true",
                   help="decode JPEGs with DCT scaling (1/2, 1/4 or 1/8, never below the resized size) before the "
                        "bilinear resize: faster decoding, features slightly different from the exact path "
                        "(see docs/benchmarks.md); recorded in the manifest and checked on --resume; not used for "
                        "--views (default: off, exact decoding)")
    g.add_argument("--views", type=_non_negative_int, default=0, metavar="K",
                   help="K augmented training views of every image with its mask, as mmseg's ADE20K training "
                        "pipeline draws them (random resize 0.5-2x of 2048x512, a --resolution crop with "
                        "cat_max_ratio 0.75, flip; no photometric distortion), each a row of its own (image i's "
                        "views at rows i*K..i*K+K-1, paths.txt '<path>#view=k'); needs masks and a fixed "
                        "--resolution (default: 0, no views)")
    g.add_argument("--views-seed", type=_non_negative_int, default=0, metavar="S",
                   help="seed of the views: view k of image i is drawn from (S, i, k) alone, so any part size, "
                        "resume or rank gives the same bytes (default: 0)")
    g = p.add_argument_group("compute")
    g.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="compute dtype (default: auto = bfloat16 on Ampere+ GPUs, float16 on older GPUs, float32 "
                        "on CPU)")
    g.add_argument("--device", default="auto", help="cpu, cuda or cuda:N (default: auto; under torchrun each "
                                                     "rank uses cuda:LOCAL_RANK)")
    g.add_argument("--batch-size", type=_positive_int, default=16,
                   help="images per forward pass at a fixed --resolution or with --batching grouped; at native "
                        "resolution it sets the default token budget (default: 16)")
    g.add_argument("--batching", default="packed", choices=["packed", "grouped"],
                   help="native resolution: 'packed' lays images of different sizes end to end in one sequence "
                        "with block-diagonal attention (no padding, full batches; each image's features equal its "
                        "one-at-a-time encoding); 'grouped' runs one batch per patch grid (default: packed)")
    g.add_argument("--max-batch-tokens", type=_positive_int, default=None, metavar="N",
                   help="token budget of one packed batch (default: --batch-size x the longest image's tokens, "
                        "so memory stays what --batch-size images of the largest size need)")
    g.add_argument("--packed-attention", default="auto", choices=["auto", "split", "mask", "flex", "varlen"],
                   help="kernel for block-diagonal attention: split = sdpa once per image, mask = one sdpa call "
                        "with a block mask, flex = FlexAttention, varlen = flash attention's variable-length "
                        "kernel (CUDA, float16/bfloat16); auto = varlen where it runs, else split (default: auto)")
    g.add_argument("--workers", type=_non_negative_int, default=None,
                   help="DataLoader processes decoding images; 0 decodes in the main process "
                        f"(default: min(4, CPU count) = {min(4, os.cpu_count() or 1)})")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="output folder (required)")
    g.add_argument("--save-dtype", default="float16", choices=["float16", "float32"],
                   help="dtype of the stored features (default: float16; an error, never a clip, if a value "
                        "exceeds float16's range)")
    g.add_argument("--resume", action="store_true",
                   help="continue an interrupted extraction in --out (same options required); recomputes "
                        "only unfinished images; a finished --out is left as it is")
    g.add_argument("--overwrite", action="store_true", help="delete what an extraction wrote in --out first (refused, deleting nothing, when "
                        "--out holds other files)")
    g.add_argument("--commit-interval", type=float, default=2.0, metavar="SECONDS",
                   help="how often finished rows are flushed and marked done; a crash loses at most about "
                        "this much work (default: 2.0)")
    g = p.add_argument_group("parts and task arrays")
    g.add_argument("--part-size", type=_positive_int, default=DEFAULT_PART_SIZE, metavar="N",
                   help="images per part, the unit of work, resume and scheduling: each part is extracted and "
                        "committed on its own, then all are joined into the layer-{k}_{pool}.npy files; the "
                        "same --part-size gives the same bytes however the parts are shared out "
                        f"(default: {DEFAULT_PART_SIZE})")
    g.add_argument("--num-tasks", type=_positive_int, default=None, metavar="N",
                   help="run as one of N independent tasks (a Slurm job array, N machines): task I does parts "
                        "I, I+N, I+2N, ...; the last task to finish joins the parts (default: "
                        "$SLURM_ARRAY_TASK_COUNT when set, else 1)")
    g.add_argument("--task-index", type=_non_negative_int, default=None, metavar="I",
                   help="this task's index, 0..N-1 (default: $SLURM_ARRAY_TASK_ID minus "
                        "$SLURM_ARRAY_TASK_MIN when set)")
    g.add_argument("--engine", default="local", choices=["local", "ray"],
                   help="local: this process extracts its parts (under torchrun each rank, in a task array each "
                        "task); ray: a pool of Ray actors, each holding the model, takes the parts "
                        "(pip install 'sail-vision[ray]') (default: local)")
    g.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help="Ray cluster to use ('auto', 'ray://HOST:10001'); default: start a local Ray for this run")
    g.add_argument("--ray-actors", type=_positive_int, default=None, metavar="N",
                   help="actors encoding parts (default: one per GPU of the cluster, else its CPUs divided by "
                        "--ray-cpus-per-actor)")
    g.add_argument("--ray-cpus-per-actor", type=_positive_int, default=None, metavar="N",
                   help="CPUs each actor reserves (torch threads on CPU actors); more than the largest node has "
                        "is refused (default: min(4, the largest node's CPUs) for CPU actors, 1 for GPU actors)")
    g.add_argument("--no-consolidate", action="store_true",
                   help="when every part is done, finish the dataset but keep the feature arrays in their parts "
                        "(no copy; open_feature_dir, probes and pca read them as one dataset); "
                        "`sail-vision consolidate DIR` joins them later (default: join them)")
    g.add_argument("--finalize", action="store_true",
                   help="only join the finished parts of --out into the dataset's files (after the tasks of a "
                        "task array); an error naming the unfinished parts if some are missing")
    g = p.add_argument_group("bad inputs")
    g.add_argument("--strict", action="store_true",
                   help="stop at the first image that cannot be used (default: skip it and record it in "
                        "failures.jsonl and the manifest)")
    g.add_argument("--allow-failures", action="store_true",
                   help="exit 0 even when some images failed (default: exit 1 if any failed)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..layer_indices import parse_layer_list
    from ..extraction import ExtractOptions, extract

    layers = parse_layer_list(" ".join(args.layers))
    options = ExtractOptions(
        layers=layers, pools=args.pool, norm=args.norm, resolution=args.resolution, max_tokens=args.max_tokens,
        dtype=args.dtype, device=args.device, batch_size=args.batch_size, workers=args.workers, resume=args.resume,
        overwrite=args.overwrite, save_dtype=args.save_dtype, limit=args.limit, strict=args.strict,
        max_pixels=args.max_pixels or None, layout=args.layout, split=args.split, labels_file=args.labels_file,
        masks=args.masks, reduce_zero_label=args.reduce_zero_label, depths=args.depths,
        depth_scale=args.depth_scale,
        progress=not args.no_progress, commit_interval=args.commit_interval, batching=args.batching,
        max_batch_tokens=args.max_batch_tokens, packed_attention=args.packed_attention, part_size=args.part_size,
        num_tasks=args.num_tasks, task_index=args.task_index, finalize=args.finalize,
        consolidate=not args.no_consolidate, engine=args.engine, ray_address=args.ray_address,
        ray_actors=args.ray_actors, ray_cpus_per_actor=args.ray_cpus_per_actor, views=args.views,
        views_seed=args.views_seed, allow_paths_under=tuple(args.allow_paths_under or ()),
        jpeg_draft=args.jpeg_draft)
    result = extract(args.checkpoint, args.images, args.out, options)
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # rank 0 reports (and sets the exit status) for the whole run
    print(result.summary())
    if result.finished and result.num_failed:
        kinds = {}
        for record in result.failures:
            kinds[record["kind"]] = kinds.get(record["kind"], 0) + 1
        listing = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        print(f"{result.num_failed} image(s) failed ({listing}); see {result.out / 'failures.jsonl'}",
              file=sys.stderr)
        if not args.allow_failures:
            return 1
    return 0
