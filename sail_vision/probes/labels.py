"""Labels and class names of probe data: labels as class indices (refusing ids that are not indices),
``--classes`` files, labels from file names (``--label-pattern``), and train / val classes matched by name
(:func:`align_classes`)."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .errors import ProbeDataError

if TYPE_CHECKING:
    from .data import ProbeData

#: Labels without class names are refused as "ids, not indices" above this value when they are also
#: more than UNNAMED_SPREAD times the number of distinct labels (a 10^9 label would need a 10^9-way head).
UNNAMED_MAX_LABEL = 1000
UNNAMED_SPREAD = 10


def as_labels(labels, where: str, num_rows: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ProbeDataError(f"{where}: labels must be a 1-D array, got shape {labels.shape}")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ProbeDataError(f"{where}: labels must be whole numbers (found non-integers or NaN)")
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise ProbeDataError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    if labels.shape[0] != num_rows:
        raise ProbeDataError(f"{where}: {labels.shape[0]} labels for {num_rows} feature rows; features and "
                             f"labels must have the same length")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        first = int(np.flatnonzero(labels < 0)[0])
        raise ProbeDataError(f"{where}: negative label {int(labels[first])} at row {first} "
                             f"({int((labels < 0).sum())} rows); every row needs a class index >= 0")
    return labels


def check_label_range(labels: np.ndarray | None, classes: list[str] | None, where: str, names_from: str) -> None:
    """Named labels must index the names; unnamed ones must look like class indices, not ids."""
    if labels is None or not labels.size:
        return
    top = int(labels.max())
    if classes is not None:
        if top >= len(classes):
            row = int(np.flatnonzero(labels >= len(classes))[0])
            raise ProbeDataError(f"{where}: label {top} (first such row {row}) but only {len(classes)} class "
                                 f"names in {names_from} (labels 0..{len(classes) - 1}); the labels and the "
                                 f"class names do not belong together")
        return
    distinct = int(np.unique(labels).size)
    if top >= UNNAMED_MAX_LABEL and top + 1 > UNNAMED_SPREAD * distinct:
        raise ProbeDataError(f"{where}: labels go up to {top} but only {distinct} distinct values occur; labels "
                             f"must be class indices 0..C-1 (a probe has one output per index): renumber them, "
                             f"or name them with --classes FILE")


def name_differences(stored: list[str], given: list[str], shown: int = 5) -> str:
    """Which names ``given`` lacks and adds compared with ``stored``, or where their order first differs."""
    def some(names: list[str]) -> str:
        return ", ".join(map(repr, names[:shown])) + (f" and {len(names) - shown} more" if len(names) > shown else "")

    missing = [n for n in stored if n not in set(given)]
    extra = [n for n in given if n not in set(stored)]
    if missing or extra:
        return "; ".join(part for part in (f"missing {some(missing)}" if missing else "",
                                           f"extra {some(extra)}" if extra else "") if part)
    if len(given) != len(stored):
        return f"{len(given)} names given for {len(stored)} classes"
    first = next(i for i, (a, b) in enumerate(zip(stored, given)) if a != b)
    return f"the same names in another order (label {first} is {stored[first]!r}, --classes says {given[first]!r})"


def read_classes_file(path: str | Path) -> list[str]:
    """Class names, one per line (label i is line i); blank lines at the end are ignored (``~`` expanded)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ProbeDataError(f"--classes {path}: no such file (one class name per line, label i on line i)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ProbeDataError(f"--classes {path}: not a readable UTF-8 text file ({exc})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    check_class_names(names, f"--classes {path}")
    return names


def check_class_names(names: Sequence[str], where: str) -> None:
    if not names:
        raise ProbeDataError(f"{where}: no class names")
    if any(not n for n in names):
        raise ProbeDataError(f"{where}: class name {names.index('')} is empty")
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            raise ProbeDataError(f"{where}: class name {name!r} appears twice (labels {seen[name]} and {index})")
        seen[name] = index


def labels_from_paths(paths: Sequence[str], pattern: str, where: str) -> tuple[np.ndarray, list[str]]:
    """Class of each path from the first group of ``pattern`` searched in its file name; classes sorted."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ProbeDataError(f"--label-pattern {pattern!r}: not a regular expression ({exc})") from None
    names = []
    for path in paths:
        match = regex.search(Path(path).name)
        if match is None:
            raise ProbeDataError(f"{where}: --label-pattern {pattern!r} does not match the file name of {path}")
        names.append(match.group(1) if regex.groups else match.group(0))
    if not names:
        raise ProbeDataError(f"{where}: no image paths to apply --label-pattern to")
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[n] for n in names], dtype=np.int64), classes


def describe_classes(classes: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(classes[:limit])
    return f"{shown}, ... ({len(classes)} in all)" if len(classes) > limit else shown


def align_classes(train: ProbeData, val: ProbeData) -> ProbeData:
    """``val`` with its labels renumbered to train's class indices, matched by class *name*.

    A val class that train does not name, or names but has no training row for, is refused with
    both lists. Labels without names are compared as numbers, and only when neither side has
    names; one side named and the other not is refused (name the numbers with ``--classes``).
    """
    if val.labels is None:
        return val
    if (train.classes is None) != (val.classes is None):
        named, bare = (train, val) if train.classes is not None else (val, train)
        origin = f" from {bare.label_source}" if bare.label_source else ""
        raise ProbeDataError(f"{named.source} names its classes ({describe_classes(named.classes)}) but the labels "
                             f"of {bare.source} are bare numbers{origin}; pass --classes FILE (one name per line) "
                             f"to name them, so train and val are matched by class name")
    present_train = np.unique(train.labels)
    if train.classes is None:
        unseen = np.setdiff1d(np.unique(val.labels), present_train)
        if unseen.size:
            raise ProbeDataError(f"val data {val.source}: labels {', '.join(map(str, unseen[:10].tolist()))} never "
                                 f"occur in train {train.source} (train labels: "
                                 f"{', '.join(map(str, present_train[:20].tolist()))}); without class names the "
                                 f"labels are compared as numbers, so train and val must share their numbering")
        return val
    position = {name: i for i, name in enumerate(train.classes)}
    val_present = [val.classes[i] for i in np.unique(val.labels)]
    unknown = [name for name in val_present if name not in position]
    if unknown:
        raise ProbeDataError(f"val data {val.source}: classes {describe_classes(unknown)} are not train classes; "
                             f"val classes: {describe_classes(val_present)}; train classes "
                             f"({train.source}): {describe_classes(train.classes)}")
    trained = {train.classes[i] for i in present_train}
    empty = [name for name in val_present if name not in trained]
    if empty:
        raise ProbeDataError(f"val data {val.source}: classes {describe_classes(empty)} have no training row in "
                             f"{train.source} (train rows cover: {describe_classes(sorted(trained))})")
    mapping = np.asarray([position.get(name, -1) for name in val.classes], dtype=np.int64)
    return replace(val, labels=mapping[val.labels], classes=list(train.classes))


def num_classes_of(train: ProbeData) -> int:
    """Outputs of a head trained on ``train``: its class names, or the largest label + 1."""
    if train.classes is not None:
        return len(train.classes)
    return int(train.labels.max()) + 1
