"""The feature folder format: writing, memory-mapped reading, validity, manifest validation."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sail_vision.errors import SailVisionError
from sail_vision.feature_store import (FeatureStoreError, feature_name, open_feature_dir, parse_feature_name,
                                       write_feature_dir)


def _write(tmp_path, **kwargs):
    rng = np.random.default_rng(0)
    features = {"layer-4_mean": rng.random((5, 8), dtype=np.float32).astype(np.float16),
                "layer-4_patch": rng.random((5, 2, 3, 8), dtype=np.float32)}
    return write_feature_dir(tmp_path / "f", features, labels=[0, 1, 0, 2, 1], classes=["a", "b", "c"],
                             paths=[f"/img/{i}.jpg" for i in range(5)], **kwargs), features


def test_round_trip_with_memory_maps(tmp_path):
    folder, features = _write(tmp_path, note="hello")
    assert folder.names == ["layer-4_mean", "layer-4_patch"]
    mean = folder.feature("layer-4_mean")
    assert isinstance(mean, np.memmap) and mean.dtype == np.float16
    np.testing.assert_array_equal(mean, features["layer-4_mean"])
    assert folder.feature("layer-4_patch.npy").shape == (5, 2, 3, 8)
    assert folder.info("layer-4_patch")["layout"] == "grid"
    assert folder.labels.tolist() == [0, 1, 0, 2, 1] and folder.classes == ["a", "b", "c"]
    assert folder.paths[-1] == "/img/4.jpg" and folder.failures == []
    manifest = folder.manifest
    assert manifest["complete"] is True and manifest["note"] == "hello" and manifest["layers"] == [4]
    for name in ("layer-4_mean.npy", "layer-4_patch.npy", "labels.npy", "valid.npy"):
        assert isinstance(np.load(tmp_path / "f" / name, mmap_mode="r"), np.memmap)


def test_invalid_rows_are_never_presented(tmp_path):
    folder, features = _write(tmp_path, valid=[True, False, True, True, False])
    np.testing.assert_array_equal(folder.feature("layer-4_mean"), features["layer-4_mean"][[0, 2, 3]])
    assert folder.labels.tolist() == [0, 0, 2]
    assert folder.paths == ["/img/0.jpg", "/img/2.jpg", "/img/3.jpg"]
    assert folder.feature("layer-4_mean", valid_only=False).shape == (5, 8)
    assert folder.num_valid == 3 and folder.manifest["num_failed"] == 2


def test_names():
    assert feature_name(12, "mean") == "layer-12_mean"
    assert parse_feature_name("layer-12_mean") == (12, "mean")
    assert parse_feature_name("pixels") == (None, None)
    with pytest.raises(FeatureStoreError):
        feature_name(-1, "mean")


def _manifest(tmp_path):
    return json.loads((tmp_path / "f" / "manifest.json").read_text())


def _set_manifest(tmp_path, manifest):
    (tmp_path / "f" / "manifest.json").write_text(json.dumps(manifest))


def test_missing_folder_or_manifest(tmp_path):
    with pytest.raises(FeatureStoreError, match="no such feature folder"):
        open_feature_dir(tmp_path / "absent")
    (tmp_path / "plain").mkdir()
    with pytest.raises(FeatureStoreError, match="no manifest.json"):
        open_feature_dir(tmp_path / "plain")
    assert issubclass(FeatureStoreError, SailVisionError)


@pytest.mark.parametrize("change, message", [
    (lambda m: "not json{", "malformed JSON"),
    (lambda m: {**m, "format": "other"}, "not a sail-vision feature manifest"),
    (lambda m: {**m, "version": 2}, "format version 2 is not supported"),
    (lambda m: {**m, "complete": False}, r"unfinished.*--resume"),
    (lambda m: {**m, "num_items": 6}, "valid.npy has shape \\(5,\\), expected \\(6,\\)"),
    (lambda m: {**m, "num_items": "5"}, "num_items"),
    (lambda m: {**m, "features": {**m["features"], "layer-4_mean": {**m["features"]["layer-4_mean"],
                                                                     "shape": [5, 9]}}}, "manifest says"),
    (lambda m: {**m, "features": {**m["features"], "layer-9_end": {"file": "layer-9_end.npy"}}},
     "layer-9_end.npy is missing"),
    (lambda m: {**m, "classes": "abc"}, "classes"),
])
def test_manifest_is_validated(tmp_path, change, message):
    _write(tmp_path)
    changed = change(_manifest(tmp_path))
    if isinstance(changed, str):
        (tmp_path / "f" / "manifest.json").write_text(changed)
    else:
        _set_manifest(tmp_path, changed)
    with pytest.raises(FeatureStoreError, match=message):
        open_feature_dir(tmp_path / "f")


def test_changed_array_files_are_detected(tmp_path):
    _write(tmp_path)
    np.save(tmp_path / "f" / "labels.npy", np.zeros(4, np.int64))
    with pytest.raises(FeatureStoreError, match=r"labels.npy has shape \(4,\), expected \(5,\)"):
        open_feature_dir(tmp_path / "f")


def test_unknown_feature_lists_the_available_ones(tmp_path):
    folder, _ = _write(tmp_path)
    with pytest.raises(FeatureStoreError, match="no feature 'layer-3_mean'; available: layer-4_mean, layer-4_patch"):
        folder.feature("layer-3_mean")


def test_writer_rejects_inconsistent_input(tmp_path):
    with pytest.raises(FeatureStoreError, match="same number of rows"):
        write_feature_dir(tmp_path / "a", {"x": np.zeros((3, 2)), "y": np.zeros((4, 2))})
    with pytest.raises(FeatureStoreError, match="labels must be"):
        write_feature_dir(tmp_path / "b", {"x": np.zeros((3, 2))}, labels=[0, 1])
    with pytest.raises(FeatureStoreError, match="feature name"):
        write_feature_dir(tmp_path / "c", {"bad/name": np.zeros((3, 2))})
    write_feature_dir(tmp_path / "d", {"x": np.zeros((3, 2))})
    with pytest.raises(FeatureStoreError, match="not empty"):
        write_feature_dir(tmp_path / "d", {"x": np.ones((3, 2))})
    assert open_feature_dir(write_feature_dir(tmp_path / "d", {"x": np.ones((3, 2))}, overwrite=True).path
                            ).feature("x").sum() == 6


def test_native_patch_rows_and_offsets_from_an_extraction(tiny_checkpoint, tmp_path):
    from sail_vision.extraction import extract

    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, size in enumerate([(16, 16), (24, 16), (16, 16), (32, 24)]):
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "2.png").write_bytes(b"broken")
    extract(tiny_checkpoint, images, tmp_path / "out", pools=["patch"], workers=0, progress=False)
    folder = open_feature_dir(tmp_path / "out")
    assert folder.info("layer-4_patch")["layout"] == "rows"
    all_offsets = folder.patch_offsets("layer-4_patch", valid_only=False)
    assert all_offsets.tolist() == [0, 4, 10, 10, 22]  # the broken image has no rows
    offsets = folder.patch_offsets("layer-4_patch")
    assert offsets.tolist() == [0, 4, 10, 22]
    rows = folder.feature("layer-4_patch")
    assert rows.shape == (22, 256)
    assert folder.patch_grids().tolist() == [[2, 2], [2, 3], [3, 4]]
    np.testing.assert_array_equal(folder.patch_maps("layer-4_patch", 2), rows[10:22].reshape(3, 4, 256))
