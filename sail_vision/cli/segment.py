"""``sail-vision segment``: segment images with a trained mmseg config and save overlays."""

from __future__ import annotations


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "segment", help="segment images with a trained segmentor; save colour overlays with a legend",
        description="Load an mmseg config and checkpoint trained with tools/train.py (see docs/segmentation.md), "
                    "predict the classes of each IMAGE and write the image with the classes painted over it and a "
                    "legend of the classes found. Several images of different sizes share SAIL's forwards "
                    "(packed; model.backbone.batching / max_batch_tokens choose how); each result equals "
                    "segmenting that image alone.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image file(s) to segment")
    p.add_argument("--config", required=True, help="config file, e.g. configs/sail/*.py (required)")
    p.add_argument("--checkpoint", required=True, help="segmentor checkpoint (.pth) from tools/train.py (required)")
    p.add_argument("--out", required=True,
                   help="output picture for one IMAGE, e.g. overlay.png; with several, a folder that receives "
                        "<image name>.png for each (required)")
    p.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    p.add_argument("--alpha", type=float, default=0.5, help="opacity of the class colours, 0..1 (default: 0.5)")
    p.add_argument("--save-labels", default=None,
                   help="also save the raw class-index map as a PNG; with several IMAGEs, a folder that receives "
                        "<image name>.png for each (default: not saved)")
    p.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                   help="override config entries as tools/train.py does, e.g. "
                        "model.backbone.checkpoint=/models/SAIL-7B, or a hub id such as "
                        "model.backbone.checkpoint=ORG/SAIL-7B@REVISION (default: none)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from PIL import Image

    from ..devices import resolve_device
    from ..errors import InputError
    from ..mmseg.inference import load_segmentor, save_overlay, segment_images
    from ..preprocessing import decode_image

    if not 0.0 <= args.alpha <= 1.0:
        raise InputError(f"--alpha {args.alpha}: use a value in [0, 1]")
    outs, label_outs = _output_paths(args.images, args.out, args.save_labels)
    images = [decode_image(path) for path in args.images]  # fail on a bad image before loading the model
    model = load_segmentor(args.config, args.checkpoint, device=str(resolve_device(args.device)),
                           cfg_options=args.cfg_options)
    predictions = segment_images(model, images)
    meta = model.dataset_meta or {}
    classes = meta.get("classes") or [str(i) for i in range(max(int(p.max()) for p in predictions) + 1)]
    palette = meta.get("palette") or _default_palette(len(classes))
    for image, prediction, out, label_out in zip(images, predictions, outs, label_outs):
        print(f"overlay      {save_overlay(image, prediction, classes, palette, out, alpha=args.alpha)}")
        if label_out:
            Path(label_out).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(prediction.astype("uint8" if prediction.max() < 256 else "uint16")).save(label_out)
            print(f"labels       {label_out}")
    return 0


def _output_paths(images, out, save_labels):
    """(overlay paths, label paths or None each): the given files for one image, ``<folder>/<image
    name>.png`` for several."""
    from pathlib import Path

    from ..errors import InputError

    if len(images) == 1:
        return [out], [save_labels]
    stems = [Path(image).stem for image in images]
    repeated = sorted({stem for stem in stems if stems.count(stem) > 1})
    if repeated:
        raise InputError(f"images share the name(s) {', '.join(repeated)}; with several IMAGEs the outputs are "
                         f"<folder>/<image name>.png, so give images with different names")
    folders = [Path(out)] + ([Path(save_labels)] if save_labels else [])
    for folder in folders:
        if folder.exists() and not folder.is_dir():
            raise InputError(f"{str(folder)!r} is a file; with several IMAGEs --out and --save-labels are folders")
    if save_labels and folders[0].resolve() == folders[1].resolve():
        raise InputError(f"--out and --save-labels are the same folder {out!r}; give two folders")
    labels = [folders[1] / f"{stem}.png" for stem in stems] if save_labels else [None] * len(stems)
    return [folders[0] / f"{stem}.png" for stem in stems], labels


def _default_palette(n: int):
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, size=(n, 3)).tolist()
