"""Input layouts (folder, ImageNet, ADE20K, list files) and per-image decoding rules."""

from __future__ import annotations

import numpy as np
import pytest

from sail_vision.errors import InputError
from sail_vision.sources.resolve import (detect_layout,
                                           resolve_inputs)
from sail_vision.sources.files import find_duplicates

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


def _imagenet(root, classes=("n02000002", "n01000001"), per_class=2):
    for c in classes:
        for i in range(per_class):
            save_rgb(root / c / f"{c}_{i}.JPEG", 8, 8, seed=i)


def test_imagenet_layout_sorts_classes_to_labels(tmp_path):
    split = tmp_path / "imagenet" / "train"
    _imagenet(split)
    source = resolve_inputs(split)
    assert source.layout == "imagenet"
    assert source.classes == ["n01000001", "n02000002"]
    assert source.labels.tolist() == [0, 0, 1, 1]
    assert all("n01000001" in p for p in source.paths[:2])
    # From the root, the split must be named; with --split it is the same listing.
    with pytest.raises(InputError, match="--split train"):
        resolve_inputs(tmp_path / "imagenet")
    again = resolve_inputs(tmp_path / "imagenet", split="train")
    assert again.paths == source.paths and again.labels.tolist() == source.labels.tolist()


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


def test_text_list_with_integer_and_named_labels(tmp_path):
    save_rgb(tmp_path / "a b.png", 8, 8)
    save_rgb(tmp_path / "sub" / "c.png", 8, 8)
    plain = tmp_path / "plain.txt"
    plain.write_text("# comment\na b.png\n\nsub/c.png\n")
    source = resolve_inputs(plain)
    assert source.layout == "list" and source.labels is None
    assert source.paths == [str(tmp_path / "a b.png"), str(tmp_path / "sub" / "c.png")]
    ints = tmp_path / "ints.txt"
    ints.write_text("a b.png 3\nsub/c.png\t1\n")
    assert resolve_inputs(ints).labels.tolist() == [3, 1]
    named = tmp_path / "named.txt"
    named.write_text("a b.png dog\nsub/c.png cat\n")
    source = resolve_inputs(named)
    assert source.classes == ["cat", "dog"] and source.labels.tolist() == [1, 0]
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("sub/c.png 1\nsub/c.png\n")
    with pytest.raises(InputError, match="mixed.txt:2: has no label"):
        resolve_inputs(mixed)


def test_csv_list_with_header(tmp_path):
    listing = tmp_path / "list.csv"
    listing.write_text("path,label\n/data/x.jpg,4\n/data/y,z.jpg,5\n")
    with pytest.raises(InputError, match="list.csv:3"):
        resolve_inputs(listing)
    listing.write_text("path,label\n/data/x.jpg,4\n\"/data/y,z.jpg\",5\n")
    source = resolve_inputs(listing)
    assert source.paths == ["/data/x.jpg", "/data/y,z.jpg"] and source.labels.tolist() == [4, 5]


def test_missing_or_empty_inputs_raise_clear_errors(tmp_path):
    with pytest.raises(InputError, match="no such folder or list file"):
        resolve_inputs(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        resolve_inputs(tmp_path / "empty")
    with pytest.raises(InputError, match="layout 'coco'"):
        resolve_inputs(tmp_path, layout="coco")


def test_duplicates_are_found_by_path():
    assert find_duplicates(["/a.jpg", "/b.jpg", "/a.jpg", "/b.jpg", "/a.jpg"]) == {2: 0, 3: 1, 4: 0}
