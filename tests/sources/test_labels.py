"""Label checks, class-name files and the one-line label summary."""

from __future__ import annotations

import pytest

from sail_vision.errors import InputError
from sail_vision.sources.labels import (MAX_CLASSES, label_info, label_problem, labels_summary, no_labels,
                                        parse_label_text, read_class_names)


@pytest.mark.parametrize("value, classes, problem", [
    (0, None, None), (9_999_999, None, None), (2, 3, None),
    (-1, None, "label -1 is negative"), (10**9, None, "larger than any dataset's class count"),
    (MAX_CLASSES, None, "larger than"), (3, 3, "not one of the 3 classes (0..2)"),
    ("3", None, "is not an integer"), (True, None, "is not an integer"), (2.0, None, "is not an integer"),
])
def test_label_problems(value, classes, problem):
    found = label_problem(value, classes)
    assert (found is None) if problem is None else (problem in found)


@pytest.mark.parametrize("text, value", [("3", 3), (" 12\n", 12), ("-4", -4), ("+5", 5), ("1e3", None),
                                         ("3.0", None), ("cat", None), ("", None), ("٣", None)])
def test_parse_label_text(text, value):
    assert parse_label_text(text) == value


def test_class_name_files(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("cat\n dog \nzebra\n\n\n")
    assert read_class_names(path) == ["cat", "dog", "zebra"]
    for text, message in [("", "names no classes"), ("cat\n\ndog\n", "classes.txt:2: empty class name"),
                          ("cat\ndog\ncat\n", "classes.txt:3: class 'cat' is also on line 1")]:
        path.write_text(text)
        with pytest.raises(InputError, match=message):
            read_class_names(path)
    path.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(InputError, match="not a UTF-8 text file"):
        read_class_names(path)
    with pytest.raises(InputError, match="cannot read class names"):
        read_class_names(tmp_path / "absent.txt")


def test_labels_summary_lines():
    named = label_info("class-folders", labelled=1000, rows=1002, classes=["a", "b"], names_from="class-folders")
    assert labels_summary(named) == "labels: 1,000 of 1,002 rows labelled from class-folders, 2 classes named from " \
                                    "class-folders"
    bare = label_info("shard-cls", labelled=None, rows=None, classes=None, names_from=None, why="no classes.txt")
    assert labels_summary(bare, labelled=5, rows=6) == ("labels: 5 of 6 rows labelled from shard-cls, integer labels "
                                                        "without class names (no classes.txt)")
    assert labels_summary(bare).startswith("labels: ? of ? rows")
    assert labels_summary(no_labels("folder layout: 'x' holds images itself", 3)) == \
        "labels: none (folder layout: 'x' holds images itself)"
    assert labels_summary(None).startswith("labels: none")


def test_limit_counts_the_rows_it_keeps(class_folder, tmp_path):
    """The labels record of a --limit run counts the rows the manifest will hold."""
    from sail_vision.sources import labels_summary, resolve_inputs

    full = resolve_inputs(class_folder)
    assert full.description["labels"]["rows"] == 7
    kept = resolve_inputs(class_folder, limit=4).description["labels"]
    assert (kept["labelled"], kept["rows"]) == (4, 4)
    assert labels_summary(kept).startswith("labels: 4 of 4 rows labelled from class-folders")
    (tmp_path / "list.txt").write_text("a.png\nb.png\nc.png\n")
    listed = resolve_inputs(tmp_path / "list.txt", limit=2).description["labels"]
    assert (listed["labelled"], listed["rows"]) == (0, 2)
