"""Segmentation sources: ADE20K image/annotation pairs and the generic ``pairs`` layout."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sail_vision.errors import InputError
from sail_vision.preprocessing import decode_mask
from sail_vision.sources import resolve_inputs

from image_factory import save_rgb


def _mask(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="L").save(path)
    return path


def _ade(root, split="training", stems=("ADE_train_00000001", "ADE_train_00000002"), masks=True):
    base = root / "ADEChallengeData2016"
    for i, stem in enumerate(stems):
        save_rgb(base / "images" / split / f"{stem}.jpg", 12, 8, seed=i)
        if masks:
            _mask(base / "annotations" / split / f"{stem}.png", np.full((8, 12), i))
    return base


def test_ade20k_records_carry_their_annotation_and_the_mmseg_label_rule(tmp_path):
    base = _ade(tmp_path)
    source = resolve_inputs(tmp_path, split="training")
    assert source.layout == "ade20k" and len(source.classes) == 150 and source.classes[:2] == ["wall", "building"]
    records = list(source.records())
    assert [r.mask for r in records] == [str(base / "annotations" / "training" / f"ADE_train_0000000{i}.png")
                                         for i in (1, 2)]
    segmentation = source.description["segmentation"]
    assert segmentation["reduce_zero_label"] is True and segmentation["num_classes"] == 150
    assert segmentation["ignore_index"] == 255 and "1..150 -> classes 0..149" in segmentation["rule"]
    assert source.description["labels"]["from"] == "ade20k-masks" and source.description["labels"]["labelled"] == 2
    # What the masks decode to under those settings: 0 is ignored, 1 is class 0.
    masks = [decode_mask(r.mask, reduce_zero_label=True, num_classes=150) for r in records]
    assert masks[0].max() == 255 and masks[1].max() == 0


def test_ade20k_image_without_its_annotation_is_a_mask_missing_row(tmp_path):
    base = _ade(tmp_path, stems=("ADE_train_00000001", "ADE_train_00000002", "ADE_train_00000003"))
    (base / "annotations" / "training" / "ADE_train_00000002.png").unlink()
    _mask(base / "annotations" / "training" / "ADE_train_00000009.png", np.zeros((8, 12)))
    source = resolve_inputs(tmp_path, split="training")
    records = list(source.records())
    assert [r.error[0] if r.error else None for r in records] == [None, "mask-missing", None]
    assert "ADE_train_00000002.<png|tif|...>" in records[1].error[1]
    assert source.description["labels"]["labelled"] == 2
    assert source.description["segmentation"]["unpaired_masks"]["count"] == 1


def test_ade20k_without_annotations_lists_images_and_says_so(tmp_path):
    _ade(tmp_path, split="validation", stems=("ADE_val_00000001",), masks=False)
    source = resolve_inputs(tmp_path, split="validation")
    assert source.masks is None and source.classes is None and len(source) == 1
    assert "annotations/validation folder beside the images" in source.description["labels"]["why"]


def test_pairs_match_by_relative_path_without_extension(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for rel in ("a/x.jpg", "a/y.png", "b/z.jpg", "w.jpg"):
        save_rgb(images / rel, 8, 6)
    for rel in ("a/x.png", "a/y.png", "w.tif", "orphan.png"):
        _mask(masks / rel, np.ones((6, 8)))
    _mask(masks / "b" / "z.png", np.ones((6, 8)))
    _mask(masks / "b" / "z.bmp", np.ones((6, 8)))
    (masks / "classes.txt").write_text("background\nthing\n")
    source = resolve_inputs(images, masks=masks)
    assert source.layout == "pairs" and source.classes == ["background", "thing"]
    records = list(source.records())
    assert [r.key.split("images/")[1] for r in records] == ["a/x.jpg", "a/y.png", "b/z.jpg", "w.jpg"]
    assert [r.mask and r.mask.split("masks/")[1] for r in records] == ["a/x.png", "a/y.png", None, "w.tif"]
    assert records[2].error[0] == "mask-ambiguous" and "z.bmp, z.png" in records[2].error[1]
    segmentation = source.description["segmentation"]
    assert segmentation["reduce_zero_label"] is False and segmentation["num_classes"] == 2
    assert segmentation["unpaired_masks"] == {"count": 1, "examples": [str(masks / "orphan.png")]}
    assert source.description["labels"]["from"] == "mask-files" and source.description["labels"]["labelled"] == 3
    assert resolve_inputs(images, layout="pairs", masks=masks).paths == source.paths


def test_pairs_without_class_names_and_unpaired_images(tmp_path):
    save_rgb(tmp_path / "images" / "a.jpg", 8, 6)
    save_rgb(tmp_path / "images" / "b.jpg", 8, 6)
    _mask(tmp_path / "masks" / "a.png", np.ones((6, 8)))
    source = resolve_inputs(tmp_path / "images", masks=tmp_path / "masks")
    assert source.classes is None and "no classes.txt in the masks folder" in source.description["labels"]["why"]
    assert [r.error[0] if r.error else None for r in source.records()] == [None, "mask-missing"]


def test_bad_pair_folders_are_one_line_errors(tmp_path):
    save_rgb(tmp_path / "data" / "images" / "a.jpg", 8, 6)
    _mask(tmp_path / "data" / "masks" / "z.png", np.ones((6, 8)))
    with pytest.raises(InputError, match="no image under .* has a mask"):
        resolve_inputs(tmp_path / "data" / "images", masks=tmp_path / "data" / "masks")
    with pytest.raises(InputError, match="lies inside --images"):
        resolve_inputs(tmp_path / "data", masks=tmp_path / "data" / "masks")
    with pytest.raises(InputError, match="lies inside --images"):
        resolve_inputs(tmp_path / "data" / "images", masks=tmp_path / "data" / "images")
    with pytest.raises(InputError, match="--masks .*absent: no such folder"):
        resolve_inputs(tmp_path / "data" / "images", masks=tmp_path / "absent")


def test_ade20k_class_names_match_mmseg():
    """The packaged list (read without importing mmseg) is mmseg's ADE20KDataset order exactly."""
    pytest.importorskip("mmseg")
    import sail_vision.mmseg  # noqa: F401  (mmcv-lite stand-in before mmseg's datasets import)
    from mmseg.datasets.ade import ADE20KDataset

    from sail_vision.sources.segmentation import ade20k_class_names

    assert ade20k_class_names() == list(ADE20KDataset.METAINFO["classes"])
    assert len(ade20k_class_names()) == 150
