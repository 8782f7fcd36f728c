"""Flat sources: a folder, an ImageNet tree, ADE20K, a list file, or explicit paths.

:func:`resolve_inputs` turns ``--images`` (plus ``--layout`` / ``--split`` / ``--labels-file``)
into an ordered :class:`ImageSource`: absolute paths, optional int labels and class names.
Decoding is :func:`sail_vision.preprocessing.decode_image`'s job.
"""

from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from ..errors import InputError
from .base import Record, Shard

#: File name endings the folder layouts collect (case-insensitive). List files may name anything.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                    ".pbm", ".pnm", ".jfif")
LAYOUTS = ("auto", "folder", "imagenet", "ade20k", "list")

_SYNSET_RE = re.compile(r"^n\d{8}$")


@dataclass
class ImageSource:
    """An ordered list of images to extract, with labels when the layout provides them."""

    paths: list[str]
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    layout: str = "folder"
    root: str = ""
    description: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shards(self) -> list[Shard] | None:
        """A flat source has no shards (see :class:`sail_vision.sources.base.Source`)."""
        return None

    def records(self, shard: Shard | None = None) -> Iterator[Record]:
        """Every image as a :class:`Record`, in order."""
        if shard is not None:
            raise InputError(f"{self.root}: a {self.layout} source has no shards (asked for {shard.name})")
        for index, path in enumerate(self.paths):
            yield Record(key=path, label=None if self.labels is None else int(self.labels[index]), path=path)

    def limited(self, limit: int | None) -> "ImageSource":
        """The first ``limit`` images (all of them when limit is None)."""
        if limit is None:
            return self
        if limit <= 0:
            raise InputError(f"--limit must be positive, got {limit}")
        labels = None if self.labels is None else self.labels[:limit]
        return ImageSource(self.paths[:limit], labels, self.classes, self.layout, self.root,
                           {**self.description, "limit": limit})


# ---------------------------------------------------------------------------------- listing
def _is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(root: Path) -> list[str]:
    """Absolute paths of image files under ``root``, recursively, sorted by relative path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(os.path.join(dirpath, f) for f in filenames if not f.startswith(".") and _is_image_name(f))
    return sorted((os.path.abspath(p) for p in found), key=lambda p: os.path.relpath(p, root).split(os.sep))


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _has_direct_images(root: Path) -> bool:
    return any(p.is_file() and _is_image_name(p.name) for p in root.iterdir())


def _clean_path(path: str, where: str) -> str:
    if "\n" in path or "\r" in path:
        raise InputError(f"{where}: path {path!r} contains a newline, which paths.txt cannot hold")
    return os.path.normpath(os.path.abspath(path))


def list_folder(root: Path) -> ImageSource:
    """Every image under ``root`` (recursive), no labels."""
    paths = _walk_images(root)
    return ImageSource([_clean_path(p, str(root)) for p in paths], layout="folder", root=str(root))


def list_class_folders(root: Path) -> ImageSource:
    """ImageNet-style ``<root>/<class>/**/*.JPEG``: classes sorted by name, labels 0..C-1."""
    classes = [d.name for d in _subdirs(root)]
    if not classes:
        raise InputError(f"{root}: no class folders; the ImageNet layout is <split>/<class>/*.JPEG")
    paths, labels = [], []
    for label, name in enumerate(classes):
        for path in _walk_images(root / name):
            paths.append(_clean_path(path, str(root)))
            labels.append(label)
    return ImageSource(paths, np.asarray(labels, dtype=np.int64), classes, layout="imagenet", root=str(root))


def _looks_like_label_token(token: str) -> bool:
    return bool(token) and not _is_image_name(token)


def read_list_file(list_file: Path, root: Path | None = None) -> ImageSource:
    """A text / CSV list of paths, one per line, each optionally followed by a label.

    Text lines are ``path`` or ``path<TAB or spaces>label`` (the label is the last field); CSV
    (``.csv``) rows are ``path[,label]`` with an optional header row. Relative paths are taken
    from ``root`` (default: the list file's folder). Integer labels are kept as they are; other
    labels are class names, numbered in sorted order. Blank lines and ``#`` comments are skipped.
    """
    base = root if root is not None else list_file.parent
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{list_file}: not a UTF-8 text list of image paths") from None
    except OSError as exc:
        raise InputError(f"{list_file}: cannot read list file ({exc.strerror})") from None
    rows: list[tuple[str, str | None, int]] = []
    if list_file.suffix.lower() == ".csv":
        for number, record in enumerate(csv.reader(text.splitlines()), 1):
            record = [cell.strip() for cell in record]
            if not record or not record[0] or record[0].startswith("#"):
                continue
            if number == 1 and record[0].lower() in ("path", "file", "filename", "image", "image_path"):
                continue
            if len(record) > 2:
                raise InputError(f"{list_file}:{number}: expected 'path' or 'path,label', got {len(record)} fields")
            rows.append((record[0], record[1] if len(record) == 2 and record[1] else None, number))
    else:
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "\t" in line:
                path, _, label = line.rpartition("\t")
            else:
                parts = line.rsplit(None, 1)
                path, label = (parts[0], parts[1]) if len(parts) == 2 else (line, "")
            if not _looks_like_label_token(label.strip()):
                path, label = line, ""
            rows.append((path.strip(), label.strip() or None, number))
    if not rows:
        raise InputError(f"{list_file}: lists no images")
    with_label = [r for r in rows if r[1] is not None]
    if with_label and len(with_label) != len(rows):
        missing = next(r for r in rows if r[1] is None)
        raise InputError(f"{list_file}:{missing[2]}: has no label while other lines do; give every line a "
                         f"label or none")
    paths = [_clean_path(str(base / p), f"{list_file}:{n}") for p, _, n in rows]
    labels = classes = None
    if with_label:
        raw = [r[1] for r in rows]
        if all(re.fullmatch(r"-?\d+", v) for v in raw):
            labels = np.asarray([int(v) for v in raw], dtype=np.int64)
            if labels.min() < 0:
                raise InputError(f"{list_file}: labels must be non-negative, found {labels.min()}")
        else:
            classes = sorted(set(raw))
            index = {name: i for i, name in enumerate(classes)}
            labels = np.asarray([index[v] for v in raw], dtype=np.int64)
    return ImageSource(paths, labels, classes, layout="list", root=str(base),
                       description={"list_file": str(list_file)})


def _ade20k_split_dir(root: Path, split: str | None) -> Path:
    candidates = [root / "ADEChallengeData2016" / "images", root / "images", root]
    images_dir = next((c for c in candidates if (c / "training").is_dir() or (c / "validation").is_dir()), None)
    if images_dir is None:
        if root.parent.name == "images" and root.name in ("training", "validation"):
            return root
        raise InputError(f"{root}: not an ADE20K folder; expected ADEChallengeData2016/images/"
                         f"{{training,validation}} under it")
    if split is None:
        raise InputError(f"{root}: ADE20K has two splits; pass --split training or --split validation")
    if not (images_dir / split).is_dir():
        raise InputError(f"{images_dir / split}: no such ADE20K split; use training or validation")
    return images_dir / split


def _imagenet_split_dir(root: Path, split: str | None) -> Path:
    if split is not None:
        if not (root / split).is_dir():
            found = ", ".join(d.name for d in _subdirs(root)) or "none"
            raise InputError(f"{root / split}: no such split folder (folders here: {found})")
        return root / split
    return root


def _is_synset_tree(root: Path) -> bool:
    subdirs = _subdirs(root)
    return bool(subdirs) and all(_SYNSET_RE.match(d.name) for d in subdirs)


def detect_layout(images: Path, split_given: bool = False) -> str:
    """Guess the layout of ``--images``: a list file, ADE20K, ImageNet class folders, or a folder."""
    if images.is_file():
        return "list"
    if ((images / "ADEChallengeData2016").is_dir() or images.name == "ADEChallengeData2016"
            or (images.name in ("training", "validation") and images.parent.name == "images")):
        return "ade20k"
    if _is_synset_tree(images):
        return "imagenet"
    splits = [d for d in _subdirs(images) if _is_synset_tree(d)]
    if splits and not split_given:
        raise InputError(f"{images}: looks like an ImageNet root with split folders "
                         f"({', '.join(d.name for d in splits)}); pass --split {splits[0].name} "
                         f"(or --layout folder to take every image without labels)")
    return "folder"


def _files_source(paths: list[str]) -> ImageSource:
    return ImageSource(paths, layout="files", root=os.path.dirname(paths[0]),
                       description={"layout": "files", "count": len(paths)})


def resolve_inputs(images: str | Path | Sequence[str | Path], *, layout: str = "auto", split: str | None = None,
                   labels_file: str | Path | None = None, limit: int | None = None) -> ImageSource:
    """Turn ``--images`` into an ordered :class:`ImageSource`.

    ``images`` is a folder, a list file, or explicit image paths (a list). Layouts: ``folder``
    (every image below, recursive, sorted, no labels); ``imagenet`` (``<split>/<class>/*``,
    classes sorted to labels; with ``labels_file`` a flat folder such as ImageNet val is labelled
    from a ``path label`` list); ``ade20k`` (``ADEChallengeData2016/images/<split>``); ``list``
    (see :func:`read_list_file`); ``auto`` guesses among them.
    """
    if layout not in LAYOUTS:
        raise InputError(f"layout {layout!r}: choose from {', '.join(LAYOUTS)}")
    if isinstance(images, (list, tuple)):
        if not images:
            raise InputError("no images given (--images)")
        if len(images) > 1:
            paths = [_clean_path(str(p), "--images") for p in images]
            return _files_source(paths).limited(limit)
        images = images[0]
    root = Path(images).expanduser()
    if not root.exists():
        raise InputError(f"{root}: no such folder or list file (--images)")
    if root.is_file() and _is_image_name(root.name) and layout in ("auto", "folder"):
        return _files_source([_clean_path(str(root), "--images")]).limited(limit)
    if layout == "auto":
        if root.is_file() or labels_file:
            layout = "list" if root.is_file() else "imagenet"
        else:
            layout = detect_layout(root, split_given=split is not None)
            if layout == "folder" and split is not None and (root / split).is_dir():
                layout = detect_layout(root / split)
    if layout == "list":
        if not root.is_file():
            raise InputError(f"{root}: the list layout needs a text/CSV file of paths, not a folder")
        source = read_list_file(root)
    elif not root.is_dir():
        raise InputError(f"{root}: the {layout} layout needs a folder")
    elif layout == "ade20k":
        source = list_folder(_ade20k_split_dir(root, split))
        source.layout = "ade20k"
    elif layout == "imagenet":
        base = _imagenet_split_dir(root, split)
        if labels_file is not None:
            source = read_list_file(Path(labels_file), root=base)
            source.layout = "imagenet"
        else:
            source = list_class_folders(base)
    else:
        source = list_folder(_imagenet_split_dir(root, split) if split else root)
    if labels_file is not None and source.layout not in ("imagenet",):
        raise InputError("--labels-file works with an ImageNet-style folder (e.g. the flat val folder); for "
                         "other inputs put the labels in a list file")
    source.description = {"images": str(root), "layout": source.layout, "split": split,
                          "labels_file": str(labels_file) if labels_file else None, **source.description}
    if not source.paths:
        raise InputError(f"{root}: no images found ({source.layout} layout; image files end with "
                         f"{', '.join(IMAGE_EXTENSIONS[:6])}, ...)")
    return source.limited(limit)


def find_duplicates(paths: Sequence[str]) -> dict[int, int]:
    """{index: index of the first occurrence} for every path listed more than once."""
    first: dict[str, int] = {}
    duplicates = {}
    for index, path in enumerate(paths):
        key = os.path.normcase(path)
        if key in first:
            duplicates[index] = first[key]
        else:
            first[key] = index
    return duplicates
