"""``sail-vision pca``: pictures of the first three principal components of patch features."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "pca", help="draw the first 3 principal components of patch features as RGB beside each image",
        description="Fit one PCA on the patch features of all given images (jointly, so colours are "
                    "comparable), map components 1-3 to red, green and blue, and save a figure with each image "
                    "beside its colour map. Either encode IMAGE files with --checkpoint, or read the patch "
                    "features of a finished extraction with --features.",
        epilog="examples:\n  sail-vision pca a.jpg b.jpg --checkpoint C --layer -1 --out pca.png\n"
               "  sail-vision pca --features feats/ --out pca.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files to encode (with --checkpoint)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint",
                        help="SAIL checkpoint used to encode the IMAGEs: a folder or a Hugging Face hub id "
                             "ORG/NAME[@REVISION], fetched with only the shards --layer needs (this or --features "
                             "is required)")
    source.add_argument("--features", metavar="DIR",
                        help="a finished `sail-vision extract` folder holding patch features, from --pool patch "
                             "(this or --checkpoint is required)")
    p.add_argument("--layer", type=int, default=None,
                   help="hidden-state index, negative from the end (default: -1 with --checkpoint; the deepest "
                        "extracted patch layer with --features)")
    p.add_argument("--out", required=True, help="picture to write: .png, .jpg, .pdf or .svg (required)")
    p.add_argument("--resolution", default="native",
                   help="with --checkpoint: 'native', S (shorter side + center crop) or HxW (default: native)")
    p.add_argument("--max-tokens", type=int, default=1024,
                   help="with --checkpoint: patch cap at native resolution (default: 1024)")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="with --checkpoint: compute dtype; auto = bfloat16 on Ampere+ GPUs, float16 on older GPUs, "
                        "float32 on the CPU (default: auto)")
    p.add_argument("--device", default="cpu", help="with --checkpoint: cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--limit", type=int, default=8,
                   help="with --features: picture the first N successfully extracted images (default: 8)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..errors import InputError
    from ..pca import maps_from_feature_dir, maps_from_images, pca_rgb, render_pca_figure

    if args.features:
        from ..feature_store import open_feature_dir

        if args.images:
            raise InputError("give either IMAGE files (with --checkpoint) or --features, not both")
        if args.limit <= 0:
            raise InputError(f"--limit must be positive, got {args.limit}")
        shown, maps, titles, name = maps_from_feature_dir(open_feature_dir(args.features), args.layer, args.limit)
        what = f"{name} from {args.features}"
    else:
        from ..devices import resolve_device
        from ..encoder import SailEncoder

        if not args.images:
            raise InputError("no IMAGE given; pass image files to encode (or --features DIR)")
        layer = -1 if args.layer is None else args.layer
        encoder = SailEncoder.from_pretrained(args.checkpoint, dtype=args.dtype, device=resolve_device(args.device),
                                              max_layer=layer)
        shown, maps = maps_from_images(encoder, args.images, layer, resolution=args.resolution,
                                       max_tokens=args.max_tokens)
        titles = [str(p) for p in args.images]
        what = f"layer {encoder.resolve_layers([layer])[0]} of {args.checkpoint}"
    out = render_pca_figure(shown, pca_rgb(maps), args.out, titles, suptitle=f"PCA of patch features: {what}")
    print(f"wrote {out} ({len(shown)} image(s), {what})")
    return 0
