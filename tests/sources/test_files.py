"""Flat layouts: folders, class folders (whatever their names), split roots, list files, explicit files."""

from __future__ import annotations

import pytest

from sail_vision.errors import InputError
from sail_vision.sources.files import find_duplicates
from sail_vision.sources.resolve import detect_layout, resolve_inputs

from image_factory import save_rgb


def test_folder_layout_is_recursive_sorted_and_skips_non_images(tmp_path):
    root = tmp_path / "photos"
    for rel in ["b.png", "a.jpg", "z/c.JPEG", "z/deeper/d.webp", "m/e.png"]:
        save_rgb(root / rel, 8, 8)
    (root / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    save_rgb(root / ".hidden" / "x.png", 8, 8)
    source = resolve_inputs(root)
    assert source.layout == "folder" and source.labels is None
    assert [p.split("photos/")[1] for p in source.paths] == ["a.jpg", "b.png", "m/e.png", "z/c.JPEG", "z/deeper/d.webp"]
    assert resolve_inputs(root, limit=2).paths == source.paths[:2]
    assert source.description["labels"]["why"] == ("folder layout: 'photos' holds images itself (e.g. a.jpg), so "
                                                    "its sub-folders are not read as classes")


@pytest.mark.parametrize("names", [("n02000002", "n01000001"), ("golden retriever", "Cat", "0001_tabby")])
def test_class_folders_are_recognised_whatever_their_names(tmp_path, names):
    for c, name in enumerate(names):
        for i in range(2):
            save_rgb(tmp_path / "data" / name / ("sub" if i else "") / f"{i}.png", 8, 8, seed=c)
    assert detect_layout(tmp_path / "data") == "imagenet"
    source = resolve_inputs(tmp_path / "data")
    assert source.layout == "imagenet" and source.classes == sorted(names)
    assert source.labels.tolist() == [0, 0, 1, 1] + ([2, 2] if len(names) == 3 else [])
    assert all(f"/{source.classes[label]}/" in path for path, label in zip(source.paths, source.labels))
    assert source.description["labels"] == {"from": "class-folders", "labelled": len(source), "rows": len(source),
                                             "classes": len(names), "names_from": "class-folders", "why": None}


@pytest.mark.parametrize("setup, why", [
    (lambda r: save_rgb(r / "loose.png", 8, 8), "holds images itself (e.g. loose.png)"),
    (lambda r: (r / "empty").mkdir(), "sub-folder 'empty' holds no image"),
    (lambda r: (r / "docs").mkdir() or (r / "docs" / "readme.txt").write_text("x"), "sub-folder 'docs' holds no image"),
])
def test_folders_that_break_the_class_rule_get_no_labels_and_say_why(tmp_path, setup, why):
    for name in ("cats", "dogs"):
        save_rgb(tmp_path / "data" / name / "1.png", 8, 8)
    assert resolve_inputs(tmp_path / "data").layout == "imagenet"
    setup(tmp_path / "data")
    source = resolve_inputs(tmp_path / "data")
    assert source.layout == "folder" and source.labels is None and source.classes is None
    assert why in source.description["labels"]["why"]


def test_one_sub_folder_is_not_a_class_set(tmp_path):
    save_rgb(tmp_path / "data" / "images" / "1.png", 8, 8)
    source = resolve_inputs(tmp_path / "data")
    assert source.layout == "folder" and "class folders need at least two" in source.description["labels"]["why"]


@pytest.mark.parametrize("layout", ["auto", "imagenet"])
def test_a_root_with_split_folders_is_refused_naming_them(tmp_path, layout):
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            save_rgb(tmp_path / "root" / split / name / "1.png", 8, 8)
    with pytest.raises(InputError, match="holds split folders \\(train, val\\), not classes; pass --split train"):
        resolve_inputs(tmp_path / "root", layout=layout)
    source = resolve_inputs(tmp_path / "root", layout=layout, split="val")
    assert source.classes == ["cat", "dog"] and len(source) == 2
    assert len(resolve_inputs(tmp_path / "root", layout="folder")) == 4  # everything, knowingly unlabelled
    with pytest.raises(InputError, match="no such split folder \\(folders here: train, val\\)"):
        resolve_inputs(tmp_path / "root", split="test")


def test_imagenet_layout_keeps_empty_classes_and_refuses_loose_images(tmp_path):
    for name in ("a", "c"):
        save_rgb(tmp_path / "train" / name / "1.png", 8, 8)
    (tmp_path / "train" / "b").mkdir()
    source = resolve_inputs(tmp_path / "train", layout="imagenet")
    assert source.classes == ["a", "b", "c"] and source.labels.tolist() == [0, 2]
    save_rgb(tmp_path / "train" / "stray.png", 8, 8)
    with pytest.raises(InputError, match="holds 1 image\\(s\\) outside class folders \\(e.g. stray.png\\)"):
        resolve_inputs(tmp_path / "train", layout="imagenet")


def test_imagenet_val_folder_with_path_label_list(tmp_path):
    val = tmp_path / "val"
    for i in range(3):
        save_rgb(val / f"ILSVRC2012_val_{i:08d}.JPEG", 8, 8, seed=i)
    labels = tmp_path / "val.txt"
    labels.write_text("ILSVRC2012_val_00000000.JPEG 65\nILSVRC2012_val_00000001.JPEG 970\n"
                      "ILSVRC2012_val_00000002.JPEG 0\n")
    source = resolve_inputs(val, layout="imagenet", labels_file=labels)
    assert source.labels.tolist() == [65, 970, 0] and source.classes is None
    assert source.paths[1] == str(val / "ILSVRC2012_val_00000001.JPEG")
    assert source.description["labels"]["from"] == "labels-file"
    assert source.description["labels"]["why"] == "val.txt gives integer labels"
    assert resolve_inputs(val, labels_file=labels).labels.tolist() == [65, 970, 0]  # auto + labels file


def test_text_list_with_integer_and_named_labels(tmp_path):
    save_rgb(tmp_path / "a b.png", 8, 8)
    save_rgb(tmp_path / "sub" / "c.png", 8, 8)
    plain = tmp_path / "plain.txt"
    plain.write_text("# comment\na b.png\n\nsub/c.png\n")
    source = resolve_inputs(plain)
    assert source.layout == "list" and source.labels is None
    assert source.paths == [str(tmp_path / "a b.png"), str(tmp_path / "sub" / "c.png")]
    assert source.description["labels"]["why"] == "plain.txt lists paths only"
    ints = tmp_path / "ints.txt"
    ints.write_text("a b.png 3\nsub/c.png\t1\n")
    source = resolve_inputs(ints)
    assert source.labels.tolist() == [3, 1] and source.classes is None
    named = tmp_path / "named.txt"
    named.write_text("a b.png dog\nsub/c.png cat\n")
    source = resolve_inputs(named)
    assert source.classes == ["cat", "dog"] and source.labels.tolist() == [1, 0]
    assert source.description["labels"]["classes"] == 2
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("sub/c.png 1\nsub/c.png\n")
    with pytest.raises(InputError, match="mixed.txt:2: has no label"):
        resolve_inputs(mixed)


@pytest.mark.parametrize("label, message", [("-1", "label -1 is negative"),
                                            ("1000000000", "label 1000000000 is larger than any dataset's")])
def test_list_labels_out_of_bounds_are_one_line_errors(tmp_path, label, message):
    listing = tmp_path / "list.txt"
    listing.write_text(f"a.png 0\nb.png {label}\n")
    with pytest.raises(InputError, match=f"list.txt:2: {message}") as info:
        resolve_inputs(listing)
    assert "\n" not in str(info.value)


def test_csv_list_with_header(tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n/data/x.jpg,4\n/data/y,z.jpg,5\n")
    with pytest.raises(InputError, match="list.csv:3"):
        resolve_inputs(listing)
    listing.write_text("path,label\n/data/x.jpg,4\n\"/data/y,z.jpg\",5\n")
    source = resolve_inputs(listing)
    assert source.paths == ["/data/x.jpg", "/data/y,z.jpg"] and source.labels.tolist() == [4, 5]


def test_ade20k_layout_needs_a_split(tmp_path):
    base = tmp_path / "ade" / "ADEChallengeData2016" / "images"
    save_rgb(base / "training" / "ADE_train_00000002.jpg", 8, 8)
    save_rgb(base / "training" / "ADE_train_00000001.jpg", 8, 8)
    save_rgb(base / "validation" / "ADE_val_00000001.jpg", 8, 8)
    assert detect_layout(tmp_path / "ade") == "ade20k"
    with pytest.raises(InputError, match="--split training or --split validation"):
        resolve_inputs(tmp_path / "ade")
    train = resolve_inputs(tmp_path / "ade", split="training")
    assert train.layout == "ade20k" and train.labels is None
    assert [p.rsplit("/", 1)[1] for p in train.paths] == ["ADE_train_00000001.jpg", "ADE_train_00000002.jpg"]
    assert len(resolve_inputs(base.parent, split="validation")) == 1
    with pytest.raises(InputError, match="no such ADE20K split"):
        resolve_inputs(tmp_path / "ade", split="test")


def test_explicit_files_keep_their_order_and_refuse_folders(tmp_path):
    for name in ("b.png", "a.png"):
        save_rgb(tmp_path / name, 8, 8)
    source = resolve_inputs([tmp_path / "b.png", tmp_path / "a.png"])
    assert source.layout == "files" and [p.rsplit("/", 1)[1] for p in source.paths] == ["b.png", "a.png"]
    (tmp_path / "dir").mkdir()
    with pytest.raises(InputError, match="dir: is a folder; several --images must all be image files"):
        resolve_inputs([tmp_path / "b.png", tmp_path / "dir"])


def test_missing_or_empty_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no such folder or list file"):
        resolve_inputs(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        resolve_inputs(tmp_path / "empty")
    with pytest.raises(InputError, match="no images given"):
        resolve_inputs([])


def test_limited_sources_keep_rows_errors_and_masks_together(tmp_path):
    from sail_vision.sources import ImageSource

    source = ImageSource(["/a.png", "/b.png", "/c.png"], errors={0: ("unreadable", "x"), 2: ("missing", "y")},
                         masks=["/a_m.png", None, "/c_m.png"])
    limited = source.limited(2)
    assert limited.errors == {0: ("unreadable", "x")} and limited.masks == ["/a_m.png", None]
    records = list(limited.records())
    assert [(r.key, r.error, r.mask) for r in records] == [("/a.png", ("unreadable", "x"), "/a_m.png"),
                                                           ("/b.png", None, None)]


def test_duplicates_are_found_by_path():
    assert find_duplicates(["/a.jpg", "/b.jpg", "/a.jpg", "/b.jpg", "/a.jpg"]) == {2: 0, 3: 1, 4: 0}


def test_the_old_home_of_resolve_inputs_still_works():
    from sail_vision.sources import files

    assert files.resolve_inputs is resolve_inputs and "webdataset" in files.LAYOUTS
