"""Labels as sources find them: the checks every label passes, class-name files, and the record
(``description["labels"]``) of how a source found its labels, or why it has none.

``description["labels"]`` is a JSON dict::

    {"from": "class-folders" | "list-file" | "labels-file" | "ade20k-masks" | "mask-files"
             | "shard-cls" | "shard-json" | "parquet-column" | None,
     "labelled": rows with a label (None when only known after reading every shard),
     "rows": rows listed (None likewise),
     "classes": number of class names (None when the labels are bare integers),
     "names_from": where the class names come from (None when there are none),
     "why": why there are no labels / no names (None when there is nothing to explain)}

:func:`labels_summary` turns it into the one line the extraction prints at the end of a run.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError
from ..preprocessing import IGNORE_INDEX  # noqa: F401  (re-exported: masks' ignored label)

#: Labels must be below this (no public dataset has ten million classes; a label this large is a
#: column mix-up, and a probe would try to build a head that size).
MAX_CLASSES = 10_000_000
#: The file, beside WebDataset shards or in a masks folder, that names the classes (line i = label i).
CLASSES_FILE = "classes.txt"


def label_problem(value, num_classes: int | None = None) -> str | None:
    """Why ``value`` cannot be a label (None when it can): not an integer, negative, too large."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"label {value!r} is not an integer"
    if value < 0:
        return f"label {value} is negative"
    if num_classes is not None and value >= num_classes:
        return f"label {value} is not one of the {num_classes} classes (0..{num_classes - 1})"
    if value >= MAX_CLASSES:
        return f"label {value} is larger than any dataset's class count (limit {MAX_CLASSES - 1})"
    return None


def parse_label_text(text: str) -> int | None:
    """An integer label written as text (``cls`` members, list files); None when it is not one."""
    text = text.strip()
    digits = text[1:] if text[:1] in "+-" else text
    return int(text) if digits.isdigit() and digits.isascii() else None


def read_class_names(path: Path) -> list[str]:
    """A class-name file: one name per line, line i naming label i (trailing blank lines ignored)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a UTF-8 text file of class names (one per line)") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read class names ({exc.strerror})") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    if not names:
        raise InputError(f"{path}: names no classes; write one class name per line (line i = label i)")
    if "" in names:
        raise InputError(f"{path}:{names.index('') + 1}: empty class name; write one name per line")
    seen: dict[str, int] = {}
    for number, name in enumerate(names, 1):
        if name in seen:
            raise InputError(f"{path}:{number}: class {name!r} is also on line {seen[name]}")
        seen[name] = number
    return names


def label_info(found_from: str | None, *, labelled: int | None, rows: int | None, classes: list[str] | None,
               names_from: str | None, why: str | None = None, **extra) -> dict:
    """The ``description["labels"]`` dict (see the module docstring)."""
    return {"from": found_from, "labelled": labelled, "rows": rows,
            "classes": None if classes is None else len(classes), "names_from": names_from, "why": why, **extra}


def no_labels(why: str, rows: int | None) -> dict:
    """``description["labels"]`` of a source without labels, saying why."""
    return label_info(None, labelled=0, rows=rows, classes=None, names_from=None, why=why)


def labels_summary(info: dict | None, *, labelled: int | None = None, rows: int | None = None) -> str:
    """One line for the end of a run: how many rows are labelled, with how many classes, from where.

    ``labelled`` / ``rows`` override the counts in ``info`` (sharded sources only know them once
    every shard was read).
    """
    if not info:
        return "labels: none (the inputs record nothing about labels)"
    labelled = info.get("labelled") if labelled is None else labelled
    rows = info.get("rows") if rows is None else rows
    if info.get("from") is None:
        return f"labels: none ({info.get('why') or 'the layout has no labels'})"
    counted = "?" if labelled is None else f"{labelled:,}"
    total = "?" if rows is None else f"{rows:,}"
    if info.get("classes") is None:
        names = f"integer labels without class names ({info.get('why') or 'no names given'})"
    else:
        names = f"{info['classes']:,} classes named from {info.get('names_from')}"
    return f"labels: {counted} of {total} rows labelled from {info['from']}, {names}"
