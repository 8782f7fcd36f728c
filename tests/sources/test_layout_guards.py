"""Labels cannot collapse: class-folder (and folder) layouts on a segmentation dataset are refused
naming the right layout; one class, or a class folder of label maps, is refused."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sail_vision.errors import InputError
from sail_vision.sources import resolve_inputs

from image_factory import save_rgb


def _mask(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 12), dtype=np.uint8), mode="L").save(path)


def _seg(root, images="images", masks="annotations", split=None, stems=("a", "b", "c")):
    for i, stem in enumerate(stems):
        rel = f"{split}/{stem}" if split else stem
        save_rgb(root / images / f"{rel}.jpg", 12, 8, seed=i)
        _mask(root / masks / f"{rel}.png")
    return root


@pytest.mark.parametrize("where", ["parent", "challenge"])
@pytest.mark.parametrize("layout", ["imagenet", "folder"])
def test_an_ade20k_tree_read_as_classes_or_a_folder_names_the_ade20k_layout(tmp_path, where, layout):
    _seg(tmp_path / "ADEChallengeData2016", split="training")
    root = tmp_path if where == "parent" else tmp_path / "ADEChallengeData2016"
    with pytest.raises(InputError, match="ADE20K tree .*--layout ade20k --split training") as info:
        resolve_inputs(root, layout=layout)
    assert "\n" not in str(info.value)


def test_a_renamed_ade20k_root_is_found_by_auto_and_refused_as_classes(tmp_path):
    _seg(tmp_path / "ade", split="validation")
    assert resolve_inputs(tmp_path / "ade", split="validation").layout == "ade20k"
    with pytest.raises(InputError, match="--layout ade20k"):
        resolve_inputs(tmp_path / "ade", layout="imagenet")


@pytest.mark.parametrize("images, masks", [("images", "annotations"), ("rgb", "labels"), ("Images", "GT"),
                                           ("img", "masks")])
@pytest.mark.parametrize("layout", ["auto", "imagenet", "folder"])
def test_images_beside_label_maps_name_the_pairs_layout(tmp_path, images, masks, layout):
    root = _seg(tmp_path / "nyu", images, masks)
    with pytest.raises(InputError, match=f"--layout pairs --images {root / images} --masks {root / masks}"):
        resolve_inputs(root, layout=layout)


def test_a_class_folder_of_label_maps_is_refused(tmp_path):
    root = _seg(tmp_path / "d", "pictures", "segmentation")
    with pytest.raises(InputError, match="class folder segmentation/ holds label maps named like the images in "
                                         "pictures/"):
        resolve_inputs(root)


def test_a_class_named_like_masks_with_its_own_images_stays_a_class(tmp_path):
    """The face-mask dataset: classes mask / no_mask hold different photos."""
    for i in range(3):
        save_rgb(tmp_path / "d" / "mask" / f"m{i}.jpg", 8, 8, seed=i)
        save_rgb(tmp_path / "d" / "no_mask" / f"n{i}.jpg", 8, 8, seed=i)
    source = resolve_inputs(tmp_path / "d")
    assert source.classes == ["mask", "no_mask"] and list(source.labels) == [0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("split", [None, "train"])
def test_one_class_folder_is_refused(tmp_path, split):
    base = tmp_path / "d" / split if split else tmp_path / "d"
    save_rgb(base / "only" / "a.jpg", 8, 8)
    with pytest.raises(InputError, match="has one sub-folder \\(only\\), so every image would get the same label"):
        resolve_inputs(tmp_path / "d", layout="imagenet", split=split)


def test_folders_without_label_maps_below_them_stay_readable(tmp_path):
    """ADE20K's images/<split> as a plain folder; YOLO-style images/ + labels/*.txt."""
    _seg(tmp_path / "ADEChallengeData2016", split="training")
    split = tmp_path / "ADEChallengeData2016" / "images" / "training"
    assert len(resolve_inputs(split, layout="folder").paths) == 3
    for i in range(2):
        save_rgb(tmp_path / "yolo" / "images" / f"{i}.jpg", 8, 8, seed=i)
        (tmp_path / "yolo" / "labels").mkdir(parents=True, exist_ok=True)
        (tmp_path / "yolo" / "labels" / f"{i}.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    assert len(resolve_inputs(tmp_path / "yolo", layout="folder").paths) == 2
