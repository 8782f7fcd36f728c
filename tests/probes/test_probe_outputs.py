"""Files a probe run writes, the saved head reloaded for prediction, and output-folder safety."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sail_vision.probes import FeatureInput, load_probe, run_probe
from sail_vision.probes.data import ProbeDataError, load_feature_dir
from sail_vision.probes.linear import LinearConfig

QUICK = LinearConfig(lrs=(0.01, 0.1), weight_decays=(0.0, 1e-3), epochs=5, batch_size=128)


@pytest.mark.parametrize("method", ["linear", "logreg", "knn"])
def test_outputs_and_reloaded_head(method, digits_dirs, tmp_path):
    train_dir, val_dir = digits_dirs
    inputs = [FeatureInput(("layer-4_mean",)), FeatureInput(("layer-3_end", "layer-4_end"))]
    train = load_feature_dir(train_dir)
    val = load_feature_dir(val_dir)
    out = tmp_path / method
    result = run_probe(train, val, inputs, out, method=method, linear=QUICK, cs=[0.001, 0.01], ks=[10, 20],
                       progress=False, verbose=False)
    lines = [json.loads(line) for line in (out / "grid.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * (4 if method == "linear" else 2)
    assert {line["feature"] for line in lines} == {"layer-4_mean", "layer-3_end+layer-4_end"}
    assert all(line["name"].startswith(f"{method}_") and line["holdout_top1"] is not None for line in lines)
    summary = json.loads((out / "summary.json").read_text())
    for key in ("method", "feature", "top1", "top5", {"linear": "lr", "logreg": "C", "knn": "k"}[method]):
        assert key in summary
    assert summary["method"] == method and summary["num_holdout"] > 0 and summary["num_val"] == 540
    best = max(lines, key=lambda r: (r["holdout_top1"], r["holdout_top5"]))
    assert summary["chosen"] == best["name"]
    with Image.open(out / "accuracy.png") as picture:
        assert picture.size[0] > 300
    probe = load_probe(out)
    top1, top5, predictions = probe.evaluate(val)
    assert top1 == pytest.approx(summary["top1"]) and top5 == pytest.approx(summary["top5"])
    np.testing.assert_array_equal(predictions, np.load(out / "val_predictions.npy"))
    assert summary["top1"] > 80
    with pytest.raises(ProbeDataError, match="already holds a probe result"):
        run_probe(train, val, inputs, out, method=method, linear=QUICK, progress=False, verbose=False)


def test_saved_linear_head_is_safetensors_with_train_statistics(digits_dirs, tmp_path):
    from safetensors.numpy import load_file

    train_dir, val_dir = digits_dirs
    run_probe(load_feature_dir(train_dir), load_feature_dir(val_dir), [FeatureInput(("layer-4_mean",))],
              tmp_path, linear=QUICK, progress=False, verbose=False)
    tensors = load_file(str(tmp_path / "head.safetensors"))
    assert tensors["weight"].shape == (10, 64) and tensors["bias"].shape == (10,)
    pixels = np.load(train_dir / "layer-4_mean.npy").astype(np.float64)
    np.testing.assert_allclose(tensors["mean"], pixels.mean(0), rtol=1e-5, atol=1e-5)
    meta = json.loads((tmp_path / "head.json").read_text())
    assert meta["method"] == "linear" and meta["parts"] == ["layer-4_mean"] and meta["dim"] == 64


def test_table_marks_the_chosen_point(digits_data, capsys):
    train, val = digits_data
    result = run_probe(train, val, [FeatureInput(("pixels",))], None, method="knn", ks=[1, 50], progress=False)
    printed = capsys.readouterr().out
    assert f"* {result.summary['chosen']}" in printed and "val: top1" in printed


def test_unknown_method_and_bad_grid_values(digits_data, tmp_path):
    train, val = digits_data
    pixels = [FeatureInput(("pixels",))]
    with pytest.raises(ProbeDataError, match="--method"):
        run_probe(train, val, pixels, None, method="svm", verbose=False)
    with pytest.raises(ProbeDataError, match="--lrs"):
        run_probe(train, val, pixels, None, linear=LinearConfig(lrs=(-1.0,)), verbose=False)
    with pytest.raises(ProbeDataError, match="--Cs"):
        run_probe(train, val, pixels, None, method="logreg", cs=[0.0], verbose=False)
    assert not any(tmp_path.iterdir())
