"""``sail-vision segment``: segment one image with a trained mmseg config and save an overlay."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment", help="segment an image with a trained segmentor; save a colour overlay with a legend",
        description="Load an mmseg config and checkpoint trained with tools/train.py (see docs/segmentation.md), "
                    "predict the classes of IMAGE and write the image with the classes painted over it and a "
                    "legend of the classes found.")
    p.add_argument("image", help="image file to segment")
    p.add_argument("--config", required=True, help="config file, e.g. configs/sail/*.py (required)")
    p.add_argument("--checkpoint", required=True, help="segmentor checkpoint (.pth) from tools/train.py (required)")
    p.add_argument("--out", required=True, help="output picture, e.g. overlay.png (required)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the class colours, 0..1 (default: 0.5)")
    p.add_argument("--save-labels", default=None,
                   help="also save the raw class-index map as a PNG (default: not saved)")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config entries as tools/train.py does, e.g. "
                        "model.backbone.checkpoint=/models/SAIL-7B (default: none)")
    p.set_defaults(func=run)


def run(args) -> int:
    from PIL import Image

    from ..devices import resolve_device
    from ..errors import InputError
    from ..mmseg.inference import load_segmentor, save_overlay, segment
    from ..preprocessing import decode_image

    if not 0.0 <= args.alpha <= 1.0:
        raise InputError(f"--alpha {args.alpha}: use a value in [0, 1]")
    image = decode_image(args.image)  # fail on a bad image before loading the model
    model = load_segmentor(args.config, args.checkpoint, device=str(resolve_device(args.device)),
                           cfg_options=args.cfg_options)
    prediction = segment(model, image)
    meta = model.dataset_meta or {}
    classes = meta.get("classes") or [str(i) for i in range(int(prediction.max()) + 1)]
    palette = meta.get("palette") or _default_palette(len(classes))
    out = save_overlay(image, prediction, classes, palette, args.out, alpha=args.alpha)
    print(f"overlay      {out}")
    if args.save_labels:
        Image.fromarray(prediction.astype("uint8" if prediction.max() < 256 else "uint16")).save(args.save_labels)
        print(f"labels       {args.save_labels}")
    return 0


def _default_palette(n: int):
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, size=(n, 3)).tolist()
