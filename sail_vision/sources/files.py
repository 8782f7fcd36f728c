"""Flat sources: image files listed up front (a folder, class folders, a list file, explicit paths).

An :class:`ImageSource` holds absolute paths in a fixed order, optional integer labels with their
class names, optional mask paths (segmentation layouts, see :mod:`.segmentation`) and the rows
that are already known to be unusable (an unreadable folder, a broken link, an image without its
mask). Decoding is :func:`sail_vision.preprocessing.decode_image`'s job.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..errors import InputError
from .base import Record, Shard, name_problem, rows_without_one_line
from .labels import label_info, label_problem, no_labels, parse_label_text
from .walk import Listing, subfolders, walk_files

#: File name endings the folder layouts collect (case-insensitive). List files may name anything.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                    ".pbm", ".pnm", ".jfif")
#: Folder names that mean "a split of a dataset", never "a class" (compared in lower case).
SPLIT_NAMES = ("train", "training", "val", "valid", "validation", "test", "testing", "eval", "dev")


@dataclass
class ImageSource:
    """An ordered list of image files, with labels, masks and known-bad rows when the layout has them.

    ``errors`` maps a row to ``(kind, detail)`` for rows that are recorded as failures without
    being decoded; ``masks`` (segmentation layouts) holds each row's mask path or None. A path (or
    mask path) that cannot be one line of ``paths.txt`` is replaced by its escaped stand-in and its
    row becomes a ``bad-name`` failure (:func:`.base.name_problem`), however the source was built.
    """

    paths: list[str]
    labels: np.ndarray | None = None
    classes: list[str] | None = None
    layout: str = "folder"
    root: str = ""
    description: dict = field(default_factory=dict)
    errors: dict[int, tuple[str, str]] = field(default_factory=dict)
    masks: list[str | None] | None = None

    def __post_init__(self):
        self.fail_bad_names()

    def fail_bad_names(self) -> None:
        """Make every row whose path or mask cannot be one line a ``bad-name`` failure (done on
        creation; call it again after setting ``masks`` by hand)."""
        bad_paths = rows_without_one_line(self.paths)
        bad_masks = rows_without_one_line(m or "" for m in self.masks) if self.masks is not None else []
        if not bad_paths and not bad_masks:
            return
        self.paths, self.errors = list(self.paths), dict(self.errors)
        self.masks = None if self.masks is None else list(self.masks)
        for row in sorted(set(bad_paths) | set(bad_masks)):
            stand_in, failure = name_problem(self.paths[row]) or (self.paths[row], name_problem(self.masks[row])[1])
            self.paths[row], self.errors[row] = stand_in, failure
            if self.masks is not None:
                self.masks[row] = None

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shards(self) -> list[Shard] | None:
        """A flat source has no shards (see :class:`sail_vision.sources.base.Source`)."""
        return None

    def records(self, shard: Shard | None = None) -> Iterator[Record]:
        """Every row as a :class:`Record`, in order (known-bad rows carry their ``error``)."""
        if shard is not None:
            raise InputError(f"{self.root}: a {self.layout} source has no shards (asked for {shard.name})")
        for row, path in enumerate(self.paths):
            label = None if self.labels is None or row in self.errors else int(self.labels[row])
            mask = None if self.masks is None else self.masks[row]
            yield Record(key=path, label=label, path=path, mask=mask, error=self.errors.get(row))

    def limited(self, limit: int | None) -> "ImageSource":
        """The first ``limit`` rows (all of them when limit is None)."""
        if limit is None:
            return self
        if limit <= 0:
            raise InputError(f"--limit must be positive, got {limit}")
        kept = ImageSource(self.paths[:limit], None if self.labels is None else self.labels[:limit], self.classes,
                           self.layout, self.root, {**self.description, "limit": limit},
                           {row: e for row, e in self.errors.items() if row < limit},
                           None if self.masks is None else self.masks[:limit])
        info = kept.description.get("labels")
        if info and info.get("rows") is not None and info["rows"] != len(kept.paths):  # count the kept rows
            kept.description["labels"] = {**info, "rows": len(kept.paths), "labelled": kept.labelled_rows()}
        return kept

    def labelled_rows(self) -> int:
        """Rows with a label: with masks, rows paired with one; with labels, rows not known to be bad."""
        if self.masks is not None:
            return sum(m is not None for m in self.masks)
        return 0 if self.labels is None else len(self.paths) - len(self.errors)


# ---------------------------------------------------------------------------------- listing
def is_image_name(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def clean_path(path: str) -> str:
    """An absolute, normalised path (one that cannot be a line of ``paths.txt`` becomes a ``bad-name``
    failure of its row when it enters an :class:`ImageSource`)."""
    return os.path.normpath(os.path.abspath(path))


def _from_listing(listing: Listing) -> tuple[list[str], dict[int, tuple[str, str]]]:
    paths = [clean_path(f.path) for f in listing.found]
    return paths, {row: f.error for row, f in enumerate(listing.found) if f.error is not None}


def _walk_description(listing: Listing) -> dict:
    return {"walk": listing.describe()} if listing.repeated_folders else {}


def list_folder(root: Path, why_no_labels: str = "folder layout: images are not grouped by class",
                listing: Listing | None = None) -> ImageSource:
    """Every image under ``root`` (recursive, see :mod:`.walk`), no labels."""
    listing = listing if listing is not None else walk_files(root, is_image_name)
    paths, errors = _from_listing(listing)
    return ImageSource(paths, layout="folder", root=str(root), errors=errors,
                       description={"labels": no_labels(why_no_labels, len(paths)), **_walk_description(listing)})


def refuse_split_folders(root: Path, folders: Sequence[str]) -> None:
    """An :class:`InputError` naming the split folders (train, val, ...) among ``folders``, if any."""
    splits = [name for name in folders if name.lower() in SPLIT_NAMES]
    if splits:
        raise InputError(f"{root}: holds split folders ({', '.join(splits)}), not classes; pass --split "
                         f"{splits[0]} (or --layout folder to take every image below, without labels)")


def _top_folders(listing: Listing, root: Path) -> list[str | None]:
    """For each listed entry, the sub-folder of ``root`` it lies in (None for entries directly in root)."""
    tops = []
    for found in listing.found:
        parts = os.path.relpath(found.path, root).split(os.sep)
        tops.append(parts[0] if len(parts) > 1 or found.error is not None and found.error[0] == "unreadable"
                    else None)
    return tops


def list_class_folders(root: Path, listing: Listing | None = None) -> ImageSource:
    """``<root>/<class>/**/<image>``: every sub-folder is a class (sorted names -> labels 0..C-1).

    Sub-folders without images stay classes (a class with no rows keeps its label), so two splits
    listed this way number their classes alike.
    """
    classes = subfolders(root)
    if not classes:
        raise InputError(f"{root}: no class folders; the class-folder layout is <root>/<class>/<images>")
    refuse_split_folders(root, classes)
    listing = listing if listing is not None else walk_files(root, is_image_name)
    tops = _top_folders(listing, root)
    if None in tops:
        loose = listing.found[tops.index(None)].path
        raise InputError(f"{root}: holds {tops.count(None)} image(s) outside class folders (e.g. "
                         f"{os.path.basename(loose)}); move them into a class folder or use --layout folder")
    _refuse_collapsed_classes(root, classes, listing, tops)
    paths, errors = _from_listing(listing)
    index = {name: label for label, name in enumerate(classes)}
    labels = np.asarray([index[name] for name in tops], dtype=np.int64)
    source = ImageSource(paths, labels, classes, layout="imagenet", root=str(root), errors=errors,
                         description=_walk_description(listing))
    source.description["labels"] = label_info("class-folders", labelled=len(paths) - len(source.errors),
                                              rows=len(paths), classes=classes, names_from="class-folders")
    return source


#: Folder names (lower case) that mean "label maps" (beside an images folder, or as a class folder
#: whose files pair with another folder's).
MASK_FOLDER_NAMES = ("annotations", "annotation", "masks", "mask", "labels", "label", "gt", "groundtruth",
                     "ground_truth", "segmentationclass", "segmentationobject", "segmentation", "segmentations",
                     "semantic", "label_maps", "labelmaps")


def _refuse_collapsed_classes(root: Path, classes: list[str], listing: Listing, tops: list[str | None]) -> None:
    """Refuse class folders whose labels would mean nothing: a single class, or a class folder of
    label maps (named like one, its files paired by relative name with another folder's images)."""
    if len(classes) == 1:
        raise InputError(f"{root}: has one sub-folder ({classes[0]}), so every image would get the same label; "
                         f"class folders need at least two classes (--layout folder lists the images without "
                         f"labels; for ADE20K use --layout ade20k, for images with masks --layout pairs)")
    stems: dict[str, set[str]] = {}
    for found, top in zip(listing.found, tops):
        if top is not None:
            rel = os.path.relpath(found.path, os.path.join(root, top))
            stems.setdefault(top, set()).add(os.path.splitext(rel)[0])
    for name in classes:
        mine = stems.get(name, set())
        if name.lower() not in MASK_FOLDER_NAMES or not mine:
            continue
        partner = next((other for other in classes if other != name
                        and len(mine & stems.get(other, set())) * 2 >= len(mine)), None)
        if partner is not None:
            raise InputError(f"{root}: class folder {name}/ holds label maps named like the images in {partner}/, "
                             f"not a class; read them with --layout pairs --images {root / partner} --masks "
                             f"{root / name}")


def class_folder_verdict(root: Path, listing: Listing) -> str | None:
    """None when ``root`` (walked into ``listing``) looks like class folders, else why not.

    The rule of ``--layout auto``: ``root`` holds no image itself and at least two non-hidden
    sub-folders, and every one of them holds at least one image (or an unreadable entry) below it.
    """
    folders = subfolders(root)
    if len(folders) < 2:
        return f"'{root.name}' has {len(folders)} sub-folder(s); class folders need at least two"
    tops = _top_folders(listing, root)
    if None in tops:
        loose = os.path.basename(listing.found[tops.index(None)].path)
        return f"'{root.name}' holds images itself (e.g. {loose}), so its sub-folders are not read as classes"
    empty = sorted(set(folders) - set(tops))
    if empty:
        return f"sub-folder '{empty[0]}' holds no image, so the sub-folders are not read as classes"
    return None


# ---------------------------------------------------------------------------------- list files
def _read_rows(list_file: Path, text: str) -> list[tuple[str, str | None, int]]:
    """(path, label text or None, line number) for every listed image."""
    rows = []
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
        return rows
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if "\t" in line:
            path, _, label = line.rpartition("\t")
        else:
            parts = line.rsplit(None, 1)
            path, label = (parts[0], parts[1]) if len(parts) == 2 else (line, "")
        if not label.strip() or is_image_name(label.strip()):
            path, label = line, ""
        rows.append((path.strip(), label.strip() or None, number))
    return rows


def _integer_labels(list_file: Path, rows) -> np.ndarray:
    labels = []
    for _, text, number in rows:
        value = parse_label_text(text)
        problem = label_problem(value if value is not None else text)
        if problem:
            raise InputError(f"{list_file}:{number}: {problem}; labels are 0-based class indices")
        labels.append(value)
    return np.asarray(labels, dtype=np.int64)


def read_list_file(list_file: Path, root: Path | None = None, found_from: str = "list-file") -> ImageSource:
    """A text / CSV list of paths, one per line, each optionally followed by a label.

    Text lines are ``path`` or ``path<TAB or spaces>label`` (the label is the last field); CSV
    (``.csv``) rows are ``path[,label]`` with an optional header row. Paths may name any file
    (the list is the user's own choice; ``~`` is expanded); relative ones are taken from ``root``
    (default: the list file's folder). Blank lines and ``#`` comments are skipped.
    Labels are either all integers (0-based class indices, kept as they are, no class names) or
    class names (numbered in sorted order); every line has one or none does.
    """
    base = root if root is not None else list_file.parent
    try:
        text = list_file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{list_file}: not a UTF-8 text list of image paths") from None
    except OSError as exc:
        raise InputError(f"{list_file}: cannot read list file ({exc.strerror})") from None
    rows = _read_rows(list_file, text)
    if not rows:
        raise InputError(f"{list_file}: lists no images")
    unlabelled = [r for r in rows if r[1] is None]
    if unlabelled and len(unlabelled) != len(rows):
        raise InputError(f"{list_file}:{unlabelled[0][2]}: has no label while other lines do; give every line a "
                         f"label or none")
    paths = [clean_path(str(base / os.path.expanduser(p))) for p, _, n in rows]
    description = {"list_file": str(list_file)}
    if unlabelled:
        return ImageSource(paths, layout="list", root=str(base),
                           description={**description, "labels": no_labels(f"{list_file.name} lists paths only",
                                                                            len(paths))})
    raw = [r[1] for r in rows]
    classes = None
    if all(parse_label_text(v) is not None for v in raw):
        labels = _integer_labels(list_file, rows)
        info = label_info(found_from, labelled=len(paths), rows=len(paths), classes=None, names_from=None,
                          why=f"{list_file.name} gives integer labels")
    else:
        classes = sorted(set(raw))
        index = {name: i for i, name in enumerate(classes)}
        labels = np.asarray([index[v] for v in raw], dtype=np.int64)
        info = label_info(found_from, labelled=len(paths), rows=len(paths), classes=classes,
                          names_from=f"{found_from} (sorted names)")
    return ImageSource(paths, labels, classes, layout="list", root=str(base),
                       description={**description, "labels": info})


def files_source(paths: Sequence[str]) -> ImageSource:
    """Explicit image files (several ``--images``), in the order given, no labels."""
    cleaned = [clean_path(str(p)) for p in paths]
    folders = [p for p in cleaned if os.path.isdir(p)]
    if folders:
        raise InputError(f"--images {folders[0]}: is a folder; several --images must all be image files (or "
                         f"shards); give a single folder instead")
    return ImageSource(cleaned, layout="files", root=os.path.dirname(cleaned[0]),
                       description={"count": len(cleaned),
                                    "labels": no_labels("image files given one by one", len(cleaned))})


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


def __getattr__(name: str):
    """``resolve_inputs``, ``detect_layout`` and ``LAYOUTS`` lived here before :mod:`.resolve`."""
    if name in ("resolve_inputs", "detect_layout", "LAYOUTS"):
        from . import resolve

        return getattr(resolve, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
