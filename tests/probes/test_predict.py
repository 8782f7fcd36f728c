"""--predict: refuses features unlike the training ones and NaN rows; one output row per input row."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from sail_vision.probes import FeatureInput, load_feature_dir, load_probe, run_probe
from sail_vision.probes.errors import ProbeDataError
from sail_vision.probes.predict import predict_features

NAMES = ["cat", "dog", "zebra"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, feature_folder):
    """A k-NN head trained on a folder with classes cat/dog/zebra (as `sail-vision extract` describes it),
    and the features it was trained on."""
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    labels = np.arange(60) % 3
    x = (np.eye(3)[labels] * 4 + rng.normal(0, 0.5, (60, 3))).astype(np.float32)
    feature_folder(root / "train", {"layer-4_mean": x}, labels=labels, classes=NAMES)
    run_probe(load_feature_dir(root / "train"), None, [FeatureInput(("layer-4_mean",))], root / "head",
              method="knn", ks=[3], verbose=False)
    return root, x, labels, feature_folder


def _folder(trained, path, x, name="layer-4_mean", **kwargs):
    return load_feature_dir(trained[3](path, {name: x}, **kwargs).path)


@pytest.mark.parametrize("change, message", [
    (dict(checkpoint={"weights_digest": "ffffffffffffffff"}), "checkpoint weights_digest ffffffffffffffff != 0123"),
    (dict(checkpoint={"config_fingerprint": "0"}), "checkpoint config_fingerprint"),
    (dict(preprocessing={"resolution": 448}), "preprocessing resolution 448 != 224"),
    (dict(preprocessing={"norm": True}), "preprocessing norm True != False"),
])
def test_features_of_another_checkpoint_or_preprocessing_are_refused(trained, tmp_path, change, message):
    root, x, labels, _ = trained
    probe = load_probe(root / "head")
    data = _folder(trained, tmp_path / "other", x, labels=labels, classes=NAMES, **change)
    with pytest.raises(ProbeDataError, match=message):
        predict_features(probe, data, tmp_path / "out")
    assert not (tmp_path / "out" / "predictions.csv").exists()


def test_another_layer_or_width_is_refused(trained, tmp_path):
    root, x, labels, _ = trained
    probe = load_probe(root / "head")
    other_layer = _folder(trained, tmp_path / "layer", x, name="layer-3_mean", labels=labels, classes=NAMES)
    with pytest.raises(ProbeDataError, match="no feature 'layer-4_mean'; available: layer-3_mean"):
        predict_features(probe, other_layer, None)
    wide = _folder(trained, tmp_path / "wide", np.concatenate([x, x], axis=1), labels=labels, classes=NAMES)
    with pytest.raises(ProbeDataError, match=r"features layer-4_mean \(6 dims\) != layer-4_mean \(3 dims\)"):
        predict_features(probe, wide, None)
    from sail_vision.probes import load_arrays
    from sail_vision.probes.data import renamed_single

    with pytest.raises(ProbeDataError, match="plain arrays with no record"):
        predict_features(probe, renamed_single(load_arrays(x), "layer-4_mean"), None)


def test_nan_rows_are_refused(trained, tmp_path):
    root, x, labels, _ = trained
    bad = x.copy()
    bad[5, 0] = np.nan
    data = _folder(trained, tmp_path / "nan", bad, labels=labels, classes=NAMES)
    with pytest.raises(ProbeDataError, match="1 NaN/Inf values, first at row 5"):
        predict_features(load_probe(root / "head"), data, tmp_path / "out")


def test_every_row_is_written_failed_ones_marked(trained, tmp_path):
    root, x, labels, _ = trained
    valid = np.ones(60, bool)
    valid[[2, 40]] = False
    paths = [f"/img/a,b {i}.png" for i in range(60)]  # a comma: the CSV must quote it
    data = _folder(trained, tmp_path / "val", x, labels=labels, classes=NAMES, valid=valid, paths=paths)
    (data_dir := tmp_path / "val").joinpath("failures.jsonl").write_text(
        json.dumps({"index": 2, "path": paths[2], "reason": "truncated JPEG"}) + "\n")
    data = load_feature_dir(data_dir)
    result = predict_features(load_probe(root / "head"), data, tmp_path / "out", top_k=2)
    predictions = np.load(tmp_path / "out" / "predictions.npy")
    scores = np.load(tmp_path / "out" / "scores.npy")
    assert predictions.shape == (60,) and (predictions[[2, 40]] == -1).all() and (predictions[valid] >= 0).all()
    assert np.isnan(scores[[2, 40]]).all() and np.isfinite(scores[valid]).all()
    with open(tmp_path / "out" / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["row", "path", "status", "error", "label", "class_1", "prob_1", "class_2", "prob_2"]
    assert [r["path"] for r in rows] == paths
    assert rows[2]["status"] == "failed" and rows[2]["error"] == "truncated JPEG" and rows[2]["class_1"] == ""
    assert rows[40]["status"] == "failed" and rows[40]["error"] == "image not processed"
    assert rows[0]["status"] == "ok" and rows[0]["label"] == "cat" and rows[0]["class_1"] == NAMES[predictions[0]]
    assert 0.5 < float(rows[0]["prob_1"]) <= 1 and float(rows[0]["prob_2"]) <= float(rows[0]["prob_1"])
    summary = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert summary["rows"] == 60 and summary["predicted"] == 58 and summary["failed"] == 2
    assert summary["top1"] == result.summary["top1"] == 100.0


def test_accuracy_matches_classes_by_name_or_explains_why_not(trained, tmp_path):
    root, x, labels, _ = trained
    probe = load_probe(root / "head")
    renumbered = _folder(trained, tmp_path / "renumbered", x, labels=2 - labels, classes=NAMES[::-1])
    assert predict_features(probe, renumbered, None).summary["top1"] == 100.0
    unknown = _folder(trained, tmp_path / "unknown", x, labels=labels, classes=["cat", "dog", "yak"])
    result = predict_features(probe, unknown, tmp_path / "out")
    assert result.summary["top1"] is None and "yak are not train classes" in result.summary["accuracy_note"]
    assert (tmp_path / "out" / "predictions.csv").is_file()  # the predictions are written all the same


def test_top_k_is_capped_and_checked(trained, tmp_path):
    root, x, labels, _ = trained
    probe = load_probe(root / "head")
    data = _folder(trained, tmp_path / "v", x, labels=labels, classes=NAMES)
    assert predict_features(probe, data, None, top_k=10).summary["top_k"] == 3
    with pytest.raises(ProbeDataError, match="--top-k must be >= 1"):
        predict_features(probe, data, None, top_k=0)


def test_heads_are_never_read_from_pickles(trained, tmp_path):
    """A probe folder whose head.json points at a crafted pickle, or an mmengine work dir, is refused; nothing runs."""
    import os
    import shutil

    import torch

    class Touch:
        def __reduce__(self):
            return os.system, (f"touch {tmp_path / 'MARKER'}",)

    root = trained[0]
    work_dir = tmp_path / "work_dir"
    work_dir.mkdir()
    torch.save({"state_dict": {}, "meta": Touch()}, work_dir / "iter_10.pth")
    with pytest.raises(ProbeDataError, match="no head.json.*tools/test.py"):
        load_probe(work_dir)
    shutil.copytree(root / "head", tmp_path / "head")
    meta = json.loads((tmp_path / "head" / "head.json").read_text())
    shutil.copy(work_dir / "iter_10.pth", tmp_path / "head" / "head.pth")
    for name, message in [("head.pth", "not a .safetensors file"), ("../work_dir/iter_10.pth", "not a .safetensors"),
                          ("fake.safetensors", "not a readable safetensors file")]:
        if name == "fake.safetensors":
            shutil.copy(work_dir / "iter_10.pth", tmp_path / "head" / name)
        meta["tensors"] = name
        (tmp_path / "head" / "head.json").write_text(json.dumps(meta))
        with pytest.raises(ProbeDataError, match=message):
            load_probe(tmp_path / "head")
    assert not (tmp_path / "MARKER").exists()
