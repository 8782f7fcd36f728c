"""``resolve_inputs``: turn ``--images`` (with ``--layout``, ``--split``, ``--labels-file``,
``--masks``) into a source, and the ``--layout auto`` rules that pick a layout.

``auto`` picks, in this order: shards (a ``pipe:`` command, a brace or ``::`` list, a ``.tar`` /
``.parquet`` path, or a folder of only shard files) -> ``webdataset`` / ``parquet``; ``--masks``
given -> ``pairs``; a file -> ``list`` (an image file -> itself); an ADE20K tree -> ``ade20k``;
split folders (train, val, ...) without ``--split`` -> refused, naming them; class folders (see
:func:`.files.class_folder_verdict`) -> ``imagenet``; anything else -> ``folder``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

from ..errors import InputError
from ..preprocessing import DEFAULT_DEPTH_SCALE
from .containment import allowed_roots
from .files import (IMAGE_EXTENSIONS, SPLIT_NAMES, ImageSource, class_folder_verdict, files_source, is_image_name,
                    list_class_folders, list_folder, read_list_file, refuse_split_folders)
from .parquet import open_parquet
from .segmentation import (list_ade20k, list_depth_pairs, list_nyu, list_pairs, looks_like_ade20k, looks_like_nyu,
                           segmentation_layout_hint)
from .shards import SHARD_SUFFIXES, expand_spec, looks_like_shard_spec, shard_layout
from .walk import subfolders, walk_files
from .webdataset import open_webdataset

LAYOUTS = ("auto", "folder", "imagenet", "ade20k", "nyu", "list", "pairs", "webdataset", "parquet")
SHARDED_LAYOUTS = ("webdataset", "parquet")


# ---------------------------------------------------------------------------------- shards
def _split_prefix(name: str) -> str | None:
    """The split a shard file name starts with (``train-00000-of-00004.parquet`` -> ``train``), or None."""
    word = re.split(r"[-_.]", name, maxsplit=1)[0]
    return word if word.lower() in SPLIT_NAMES else None


def _shard_files(folder: Path, split: str | None) -> list[str]:
    """The shard files directly in a folder that holds shards and no images (those of ``split``
    when given); [] when the folder is not a folder of shards."""
    try:
        names = sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))
    except OSError as exc:
        raise InputError(f"{folder}: cannot list this folder ({exc.strerror or exc})") from None
    shards = [n for n in names if shard_layout(n) is not None]
    if not shards or any(is_image_name(n) for n in names):
        return []
    splits = sorted({s for s in map(_split_prefix, shards) if s is not None})
    if split is not None:
        chosen = [n for n in shards if _split_prefix(n) == split]
        if not chosen:
            raise InputError(f"{folder}: holds no shards of split {split!r} (splits here: "
                             f"{', '.join(splits) or 'none named'})")
        shards = chosen
    elif len(splits) > 1:
        raise InputError(f"{folder}: holds the shards of several splits ({', '.join(splits)}); pass --split "
                         f"{splits[0]}")
    return [str(folder / n) for n in shards]


def _no_split_for_files(images, split: str | None) -> None:
    if split is not None:
        named = images if isinstance(images, str) else " ".join(images)
        raise InputError(f"--split {split}: picks a split folder (or a split's shards in a folder), but --images "
                         f"{named} already names files; drop --split or give the dataset's folder")


def _shard_urls(images: str | list[str], split: str | None) -> list[str] | None:
    """The shard URLs ``--images`` names, or None when it names no shards."""
    if isinstance(images, list):
        shard_like = [looks_like_shard_spec(i) for i in images]
        if any(shard_like) and not all(shard_like):
            odd = images[shard_like.index(False)]
            raise InputError(f"--images: {odd} is not a shard, but other --images are; give shards or image files")
        if not all(shard_like):
            return None
        _no_split_for_files(images, split)
        return [url for spec in images for url in expand_spec(spec)]
    if looks_like_shard_spec(images) and not os.path.isdir(images):
        _no_split_for_files(images, split)
        return expand_spec(images)
    folder = Path(images).expanduser()
    if folder.is_dir():
        if split is not None and (folder / split).is_dir():
            folder, split = folder / split, None
        return _shard_files(folder, split) or None
    return None


def _sharded(urls: list[str], spec: str, layout: str, split: str | None, allowed: tuple[str, ...]):
    kinds = {shard_layout(u) for u in urls}
    if None in kinds:
        odd = next(u for u in urls if shard_layout(u) is None)
        raise InputError(f"--images: {odd} is not a shard (shards end with {', '.join(SHARD_SUFFIXES)} or are "
                         f"pipe: commands)")
    if len(kinds) > 1:
        raise InputError("--images: mixes WebDataset tar shards and Parquet files; give one kind")
    kind = kinds.pop()
    if layout not in ("auto", kind):
        raise InputError(f"--images {spec}: names {kind} shards, not the {layout} layout")
    if allowed and kind != "parquet":
        raise InputError("--allow-paths-under: only Parquet rows name image files to contain; WebDataset shards "
                         "hold their images; drop it")
    source = open_webdataset(urls, spec) if kind == "webdataset" else open_parquet(urls, spec, allowed)
    source.description = {"layout": kind, "split": split, **source.description}
    return source


# ---------------------------------------------------------------------------------- folders
def _auto_folder(root: Path) -> ImageSource:
    """Class folders when ``root`` passes the rule, else every image below without labels."""
    refuse_split_folders(root, subfolders(root))
    listing = walk_files(root, is_image_name)
    why_not = class_folder_verdict(root, listing)
    if why_not is None:
        return list_class_folders(root, listing)
    return list_folder(root, f"folder layout: {why_not}", listing)


def detect_layout(images: Path, split_given: bool = False) -> str:
    """The layout ``--layout auto`` gives a folder or file (shard specs aside): list, ade20k,
    imagenet (class folders) or folder; an unsplit root with split folders is refused."""
    if images.is_file():
        return "list"
    if looks_like_ade20k(images):
        return "ade20k"
    if not split_given:
        refuse_split_folders(images, subfolders(images))
    return "imagenet" if class_folder_verdict(images, walk_files(images, is_image_name)) is None else "folder"


def _split_dir(root: Path, split: str | None) -> Path:
    if split is None:
        return root
    if not (root / split).is_dir():
        found = ", ".join(subfolders(root)) or "none"
        raise InputError(f"{root / split}: no such split folder (folders here: {found})")
    return root / split


def _auto_layout(root: Path, labels_file, masks, depths=None) -> str:
    """The layout ``auto`` means for a folder or list file; ``"auto"`` when only walking can tell
    (class folders or a plain folder)."""
    if masks is not None or depths is not None:
        return "pairs"
    if root.is_file():
        return "list"
    if labels_file is not None:
        return "imagenet"
    return "ade20k" if looks_like_ade20k(root) else "auto"


def _flat(root: Path, layout: str, split: str | None, labels_file, masks,
          reduce_zero_label: bool | None = None, depths=None, depth_scale: float | None = None) -> ImageSource:
    """The flat source of a folder or list file under ``layout`` (``"auto"``: class folders or folder)."""
    if layout == "list":
        if not root.is_file():
            raise InputError(f"{root}: the list layout needs a text/CSV file of paths, not a folder")
        return read_list_file(root)
    if not root.is_dir():
        raise InputError(f"{root}: the {layout} layout needs a folder")
    if layout == "ade20k":
        return list_ade20k(root, split)
    if layout == "nyu":
        return list_nyu(root, split, depth_scale)
    if layout != "pairs" and looks_like_nyu(root):  # its split folders are below images/, not here
        raise InputError(f"{root}: {segmentation_layout_hint(root)} (the {layout} layout would read depth maps "
                         f"as images)")
    base = _split_dir(root, split)
    if layout == "pairs" and depths is not None:
        return list_depth_pairs(base, Path(depths).expanduser(), depth_scale)
    if layout == "pairs":
        return list_pairs(base, Path(masks).expanduser(), bool(reduce_zero_label))
    if layout == "imagenet" and labels_file is not None:
        source = read_list_file(Path(labels_file), root=base, found_from="labels-file")
        source.layout = "imagenet"
        return source
    hint = segmentation_layout_hint(base)
    if hint is not None:
        raise InputError(f"{base}: {hint} (the {'class-folder' if layout != 'folder' else layout} layout would "
                         f"read label maps as images)")
    if layout == "imagenet":
        return list_class_folders(base)
    return list_folder(base) if layout == "folder" else _auto_folder(base)


def _check_options(layout: str, labels_file, masks, depths=None, depth_scale=None) -> None:
    if layout not in LAYOUTS:
        raise InputError(f"layout {layout!r}: choose from {', '.join(LAYOUTS)}")
    if labels_file is not None and layout not in ("auto", "imagenet"):
        raise InputError("--labels-file works with an ImageNet-style folder (e.g. the flat val folder); for "
                         "other inputs put the labels in a list file")
    if masks is not None and layout not in ("auto", "pairs"):
        raise InputError(f"--masks pairs images with masks (the pairs layout), not the {layout} layout"
                         + ("; ADE20K finds its annotations folder itself" if layout == "ade20k" else ""))
    if depths is not None and layout not in ("auto", "pairs"):
        raise InputError(f"--depths pairs images with depth maps (the pairs layout), not the {layout} layout"
                         + ("; the nyu layout finds its annotations folder itself" if layout == "nyu" else ""))
    if masks is not None and depths is not None:
        raise InputError("pass --masks or --depths, not both (one dense target per extraction)")
    if layout == "pairs" and masks is None and depths is None:
        raise InputError("the pairs layout needs --masks (the folder of label maps) or --depths (depth maps)")
    if labels_file is not None and (masks is not None or depths is not None):
        raise InputError(f"pass --labels-file or {'--masks' if masks is not None else '--depths'}, not both")
    if depth_scale is not None and (depth_scale <= 0 or depth_scale != depth_scale or depth_scale == float("inf")):
        raise InputError(f"--depth-scale {depth_scale}: must be a positive number of PNG values per metre")
    if depth_scale is not None and depths is None and layout != "nyu":
        raise InputError("--depth-scale is a rule for depth maps: pass it with --depths or --layout nyu")


def _home(images: str | Path) -> str:
    """``--images`` with ``~`` expanded in each path (each ``::`` piece of a shard list; not inside
    ``pipe:`` commands, which the shell runs)."""
    return "::".join(p if p.startswith("pipe:") else os.path.expanduser(p) for p in str(images).split("::"))


def resolve_inputs(images: str | Path | Sequence[str | Path], *, layout: str = "auto", split: str | None = None,
                   labels_file: str | Path | None = None, limit: int | None = None,
                   masks: str | Path | None = None, reduce_zero_label: bool | None = None,
                   allow_paths_under: Sequence[str | Path] = (), depths: str | Path | None = None,
                   depth_scale: float | None = None):
    """Turn ``--images`` into a source: an :class:`ImageSource` (flat layouts) or a sharded source.

    ``images`` is a folder, a list file, image files (a list), or shards (see the module
    docstring and docs/inputs.md for every layout). ``masks`` is the folder of label maps of the
    ``pairs`` layout; ``reduce_zero_label`` (None: the layout's rule) applies mmseg's rule to its
    masks (ADE20K always has it). ``allow_paths_under``: folders a Parquet row's image path may
    lead into besides the Parquet file's own (:mod:`.containment`). ``depths`` is the folder of depth
    maps of the ``pairs`` layout (the ``nyu`` layout finds its own); ``depth_scale`` (None: 1000, i.e.
    millimetres) is how many 16-bit PNG values make a metre. ``~`` is expanded in every path given.
    The description records the inputs and how labels were found.
    """
    _check_options(layout, labels_file, masks, depths, depth_scale)
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("no images given (--images)")
        images = [_home(i) for i in images] if len(images) > 1 else _home(images[0])
    else:
        images = _home(images)
    labels_file = None if labels_file is None else os.path.expanduser(labels_file)
    masks = None if masks is None else os.path.expanduser(masks)
    depths = None if depths is None else os.path.expanduser(depths)
    allowed = allowed_roots(allow_paths_under)
    may_be_shards = (masks is None and depths is None and labels_file is None
                     and layout in ("auto", *SHARDED_LAYOUTS))
    urls = _shard_urls(images, split) if may_be_shards else None
    if urls is not None:
        spec = images if isinstance(images, str) else " ".join(images)
        return _sharded(urls, spec, layout, split, allowed).limited(limit)
    if layout in SHARDED_LAYOUTS:
        raise InputError(f"--images {images}: the {layout} layout needs shards (a .tar / .parquet path, a brace "
                         f"pattern, a pipe: command or a folder of shard files)")
    if allowed:
        raise InputError("--allow-paths-under: only Parquet rows name image files to contain; folders and list "
                         "files name the files you chose (see docs/inputs.md); drop it")
    if isinstance(images, list):
        _no_split_for_files(images, split)
        return files_source(images).limited(limit)
    root = Path(images).expanduser()
    if not root.exists():
        raise InputError(f"{root}: no such folder or list file (--images)")
    if root.is_file():
        _no_split_for_files(images, split)
    if root.is_file() and is_image_name(root.name) and layout in ("auto", "folder"):
        return files_source([str(root)]).limited(limit)
    if layout == "auto":
        layout = _auto_layout(root, labels_file, masks, depths)
    if reduce_zero_label is not None and masks is None and layout != "ade20k":
        raise InputError("--reduce-zero-label is a rule for masks: pass it with --masks (the pairs layout)")
    if layout == "ade20k" and reduce_zero_label is False:
        raise InputError("ADE20K labels follow mmseg's reduce_zero_label (0 is 'other', ignored); it cannot be "
                         "turned off for the ade20k layout")
    source = _flat(root, layout, split, labels_file, masks, reduce_zero_label, depths,
                   DEFAULT_DEPTH_SCALE if depth_scale is None else float(depth_scale))
    source.description = {"images": str(root), "layout": source.layout, "split": split,
                          "labels_file": str(labels_file) if labels_file else None,
                          "masks": str(masks) if masks else None, **source.description}
    if depths is not None:
        source.description["depths"] = str(depths)
    if not source.paths:
        raise InputError(f"{root}: no images found ({source.layout} layout; image files end with "
                         f"{', '.join(IMAGE_EXTENSIONS[:6])}, ...)")
    return source.limited(limit)
