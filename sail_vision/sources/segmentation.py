"""Segmentation sources: images paired with label-map masks (ADE20K, and any image + mask folders).

Images and masks are paired by relative path without extension (``images/a/b.jpg`` <->
``masks/a/b.png``). An image without a mask is a row with error ``mask-missing`` (recorded as a
failure, never silently unlabelled); masks without an image are counted in the description.
Masks are decoded by :func:`sail_vision.preprocessing.decode_mask`, with the
``description["segmentation"]`` settings (``reduce_zero_label``, ``num_classes``).
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import InputError
from .files import MASK_FOLDER_NAMES, ImageSource, is_image_name, list_folder
from .labels import CLASSES_FILE, IGNORE_INDEX, label_info, no_labels, read_class_names
from .walk import Listing, subfolders, walk_files

ADE20K_SPLITS = ("training", "validation")
#: Folder names (lower case) that mean "the images" of a segmentation dataset (beside one of
#: ``MASK_FOLDER_NAMES``, "the label maps").
IMAGE_FOLDER_NAMES = ("images", "image", "imgs", "img", "rgb", "jpegimages", "photos")


def looks_like_ade20k(root: Path) -> bool:
    """An ADE20K tree: ``ADEChallengeData2016`` (or a folder holding it), its ``images`` folder, or a
    split below it, or a folder with ``images/<split>`` beside ``annotations``."""
    return ((root / "ADEChallengeData2016").is_dir() or root.name == "ADEChallengeData2016"
            or (root.name in ADE20K_SPLITS and root.parent.name == "images")
            or ((root / "annotations").is_dir() and any((root / "images" / s).is_dir() for s in ADE20K_SPLITS)))


#: mmseg's NYUDataset splits (``images/<split>`` beside ``annotations/<split>``).
NYU_SPLITS = ("train", "test")


def looks_like_nyu(root: Path) -> bool:
    """mmseg's NYU tree: ``annotations`` beside ``images/train`` or ``images/test``."""
    return (root / "annotations").is_dir() and any((root / "images" / s).is_dir() for s in NYU_SPLITS)


def _holds_an_image(folder: Path) -> bool:
    """Whether any image file lies below ``folder`` (stops at the first; label maps are images,
    YOLO-style ``labels/*.txt`` are not)."""
    return any(is_image_name(name) for _, _, files in os.walk(folder) for name in files)


def segmentation_layout_hint(root: Path) -> str | None:
    """When ``root`` holds a segmentation dataset's label maps beside its images (so its sub-folders
    are not classes, and a folder listing would take the label maps for images): what it looks like
    and the options that read it; else None. ADE20K's ``images`` folder or a split of it holds no
    label maps and passes."""
    if (root / "ADEChallengeData2016").is_dir() or root.name == "ADEChallengeData2016" or (
            (root / "annotations").is_dir() and any((root / "images" / s).is_dir() for s in ADE20K_SPLITS)):
        return "is an ADE20K tree (images with annotations); read it with --layout ade20k --split training"
    if looks_like_nyu(root):
        return (f"is mmseg's NYU tree (images/{{train,test}} with annotations/{{train,test}}); read depth maps "
                f"with --layout nyu --split train, or label maps with --layout pairs --images {root / 'images'} "
                f"--masks {root / 'annotations'}")
    names = {name.lower(): name for name in subfolders(root)}
    images = next((names[n] for n in IMAGE_FOLDER_NAMES if n in names), None)
    masks = next((names[n] for n in MASK_FOLDER_NAMES if n in names), None)
    if images and masks and _holds_an_image(root / masks):
        return (f"holds images ({images}/) and label maps ({masks}/), not classes; read it with --layout pairs "
                f"--images {root / images} --masks {root / masks}")
    return None


def _stem_key(path: str, root: str) -> str:
    return os.path.splitext(os.path.relpath(path, root))[0]


def _index_masks(listing: Listing, root: str) -> tuple[dict[str, list[str]], list[str]]:
    """{relative path without extension: [mask paths]} and the folders that could not be listed."""
    masks: dict[str, list[str]] = {}
    unreadable = []
    for found in listing.found:
        if found.error is not None and found.error[0] == "unreadable":
            unreadable.append(found.path)
        else:
            masks.setdefault(_stem_key(found.path, root), []).append(found.path)
    return masks, unreadable


def _mask_for(key: str, masks: dict[str, list[str]], unreadable: list[str], masks_root: str, what: str = "mask"):
    """(mask path, None) or (None, (kind, detail)) for the image whose key is ``key``; ``what`` names
    the target in the error kinds and details ("mask", "depth")."""
    found = masks.get(key, [])
    if len(found) == 1:
        return found[0], None
    if len(found) > 1:
        names = ", ".join(os.path.basename(p) for p in found)
        return None, (f"{what}-ambiguous", f"several {what} files for this image ({names}); keep one")
    expected = os.path.join(masks_root, key)
    blocked = next((u for u in unreadable if expected.startswith(u + os.sep)), None)
    if blocked:
        return None, ("unreadable", f"its {what} folder {blocked} cannot be listed")
    suffixes = "png|npy" if what == "depth" else "png|tif|..."
    return None, (f"{what}-missing", f"no {what} file {expected}.<{suffixes}> for this image")


def is_depth_name(name: str) -> bool:
    """Whether a file name can hold a depth map: a 16-bit image (PNG, TIFF, ...) or a float ``.npy``."""
    return name.lower().endswith(".npy") or is_image_name(name)


def pair_masks(source: ImageSource, images_root: str, masks_root: str, what: str = "mask") -> dict:
    """Give every row of ``source`` its mask (or a mask error); returns the pairing's description.
    With ``what="depth"`` the files paired are depth maps (images or ``.npy``)."""
    listing = walk_files(masks_root, is_depth_name if what == "depth" else is_image_name)
    masks, unreadable = _index_masks(listing, masks_root)
    source.masks = []
    used = set()
    for row, path in enumerate(source.paths):
        key = _stem_key(path, images_root)
        mask, error = _mask_for(key, masks, unreadable, masks_root, what)
        source.masks.append(mask)
        used.add(key)
        if error is not None and row not in source.errors:
            source.errors[row] = error
    source.fail_bad_names()
    unpaired = sorted(p for key, paths in masks.items() if key not in used for p in paths)
    paired = sum(m is not None for m in source.masks)
    return {"masks": masks_root, "paired": paired, "ignore_index": IGNORE_INDEX,
            "unpaired_masks": {"count": len(unpaired), "examples": unpaired[:5]}}


def _check_separate(images: Path, masks: Path, option: str = "--masks") -> None:
    images_real, masks_real = os.path.realpath(images), os.path.realpath(masks)
    if images_real == masks_real or masks_real.startswith(images_real + os.sep):
        raise InputError(f"{option} {masks}: lies inside --images {images}, so its files would be listed as "
                         f"images; keep images and targets in separate folders")
    if images_real.startswith(masks_real + os.sep):
        raise InputError(f"--images {images}: lies inside {option} {masks}; keep images and targets in separate "
                         f"folders")


def list_pairs(images: Path, masks: Path, reduce_zero_label: bool = False) -> ImageSource:
    """Any folder of images with a parallel folder of masks (the ``pairs`` layout).

    Mask values are the labels as they are (255 is ignored), or with ``reduce_zero_label``
    mmseg's rule (0 -> 255 ignored, v -> v - 1). Class names come from a ``classes.txt`` in the
    masks folder when there is one (line i names the stored label i, after any reduction).
    """
    if not masks.is_dir():
        raise InputError(f"--masks {masks}: no such folder")
    _check_separate(images, masks)
    source = list_folder(images)
    pairing = pair_masks(source, str(images), str(masks))
    if pairing["paired"] == 0:
        raise InputError(f"--masks {masks}: no image under {images} has a mask (pairs match by relative path "
                         f"without extension, e.g. a/b.jpg <-> a/b.png)")
    classes_file = masks / CLASSES_FILE
    classes = read_class_names(classes_file) if classes_file.is_file() else None
    source.layout, source.classes = "pairs", classes
    source.description = {
        **source.description,
        "labels": label_info("mask-files", labelled=pairing["paired"], rows=len(source.paths), classes=classes,
                             names_from=str(classes_file) if classes else None,
                             why=None if classes else f"no {CLASSES_FILE} in the masks folder"),
        "segmentation": {**pairing, "reduce_zero_label": bool(reduce_zero_label),
                         "num_classes": len(classes) if classes else None,
                         "rule": ("mask value 0 -> 255 (ignored); v -> v - 1 (reduce_zero_label)"
                                  if reduce_zero_label else "mask values are the labels; 255 is ignored")}}
    return source


#: The 150 ADE20K class names, one per line (package data).
ADE20K_CLASSES_FILE = "ade20k_classes.txt"


def ade20k_class_names() -> list[str]:
    """ADE20K's 150 class names, in the order of mmsegmentation's ``ADE20KDataset`` (so labels mean
    what mmseg's do; a test checks the two lists agree). Kept as a data file beside this module so
    that listing a dataset never imports mmseg."""
    text = (Path(__file__).with_name(ADE20K_CLASSES_FILE)).read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line]


def ade20k_split_dir(root: Path, split: str | None) -> Path:
    """``images/<split>`` of an ADE20K folder (root, ``ADEChallengeData2016``, ``images`` or the split)."""
    candidates = [root / "ADEChallengeData2016" / "images", root / "images", root]
    images_dir = next((c for c in candidates if any((c / s).is_dir() for s in ADE20K_SPLITS)), None)
    if images_dir is None:
        if root.parent.name == "images" and root.name in ADE20K_SPLITS:
            if split is not None and split != root.name:
                raise InputError(f"{root}: is the {root.name} split, but --split {split} was given")
            return root
        raise InputError(f"{root}: not an ADE20K folder; expected ADEChallengeData2016/images/"
                         f"{{training,validation}} under it")
    if split is None:
        raise InputError(f"{root}: ADE20K has two splits; pass --split training or --split validation")
    if not (images_dir / split).is_dir():
        raise InputError(f"{images_dir / split}: no such ADE20K split; use training or validation")
    return images_dir / split


def list_ade20k(root: Path, split: str | None) -> ImageSource:
    """ADE20K (``ADEChallengeData2016/images/<split>``), each image with ``annotations/<split>/<stem>.png``.

    Labels follow mmseg's ADE20KDataset (``reduce_zero_label``): mask value 0 ("other") is ignored
    (255) and values 1..150 are classes 0..149. Without an ``annotations/<split>`` folder the
    images are listed without masks (and the description says so).
    """
    images_dir = ade20k_split_dir(root, split)
    annotations = images_dir.parent.parent / "annotations" / images_dir.name
    source = list_folder(images_dir)
    source.layout = "ade20k"
    if not annotations.is_dir():
        source.description["labels"] = no_labels(f"no {annotations} folder beside the images", len(source.paths))
        return source
    pairing = pair_masks(source, str(images_dir), str(annotations))
    classes = ade20k_class_names()
    source.classes = classes
    source.description = {
        **source.description,
        "labels": label_info("ade20k-masks", labelled=pairing["paired"], rows=len(source.paths), classes=classes,
                             names_from="mmseg ADE20KDataset"),
        "segmentation": {**pairing, "reduce_zero_label": True, "num_classes": len(classes),
                         "rule": "mask value 0 ('other') -> 255 (ignored); 1..150 -> classes 0..149, as mmseg's "
                                 "ADE20KDataset"}}
    return source


# ---------------------------------------------------------------------------------- depth


def _depth_description(pairing: dict, depth_scale: float, rows: int, from_what: str) -> dict:
    return {"labels": no_labels(f"depth maps ({from_what}) are the targets, not class labels", rows),
            "depth": {**pairing, "depth_scale": float(depth_scale), "unit": "metre", "no_measurement": 0.0,
                      "rule": f"16-bit PNG values / {depth_scale:g} = metres (0 = no measurement); .npy float "
                              f"metres (NaN = no measurement)"}}


def list_depth_pairs(images: Path, depths: Path, depth_scale: float) -> ImageSource:
    """Any folder of images with a parallel folder of depth maps (the ``pairs`` layout with
    ``--depths``), matched like masks: by relative path without extension."""
    if not depths.is_dir():
        raise InputError(f"--depths {depths}: no such folder")
    _check_separate(images, depths, "--depths")
    source = list_folder(images)
    pairing = pair_masks(source, str(images), str(depths), "depth")
    if pairing["paired"] == 0:
        raise InputError(f"--depths {depths}: no image under {images} has a depth map (pairs match by relative path "
                         f"without extension, e.g. a/b.jpg <-> a/b.png or a/b.npy)")
    source.layout = "pairs"
    source.description = {**source.description, **_depth_description(pairing, depth_scale, len(source.paths),
                                                                      "depth-files")}
    return source


def list_nyu(root: Path, split: str | None, depth_scale: float) -> ImageSource:
    """mmseg's NYU layout: ``images/<split>/*.jpg`` with ``annotations/<split>/<stem>.png`` depth maps
    (16-bit, ``depth_scale`` values per metre; NYUDataset's ``train`` / ``test`` splits)."""
    if split is None:
        raise InputError(f"{root}: the nyu layout has two splits; pass --split train or --split test")
    images_dir, depths_dir = root / "images" / split, root / "annotations" / split
    if not images_dir.is_dir():
        raise InputError(f"{images_dir}: no such folder; the nyu layout is images/{{train,test}} beside "
                         f"annotations/{{train,test}} (mmseg's NYUDataset)")
    if not depths_dir.is_dir():
        raise InputError(f"{depths_dir}: no such folder; the nyu layout keeps depth maps in annotations/{split}")
    source = list_depth_pairs(images_dir, depths_dir, depth_scale)
    source.layout = "nyu"
    return source
