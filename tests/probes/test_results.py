"""Files a probe run writes, the saved head reloaded for prediction, and output-folder safety."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from PIL import Image

from sail_vision.probes import FeatureInput, load_probe, run_probe
from sail_vision.probes.data import ProbeDataError, load_feature_dir
from sail_vision.probes.linear import LinearConfig
from sail_vision.folder_lock import LOCK_FILE, FolderInUseError
from sail_vision.probes.results import claim_output

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
    assert summary["top1"] > 80 and summary["top1"] == result.summary["top1"]
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


def test_overwrite_replaces_only_the_files_a_probe_writes(digits_dirs, tmp_path):
    train_dir, val_dir = digits_dirs
    train, val = load_feature_dir(train_dir), load_feature_dir(val_dir)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "layers.png").write_bytes(b"stale picture of an earlier layer sweep")
    run_probe(train, val, [FeatureInput(("layer-4_mean",))], out, linear=QUICK, progress=False, verbose=False)
    assert not (out / "layers.png").exists()  # a leftover of an interrupted run is not passed off as this one's
    first = json.loads((out / "summary.json").read_text())
    run_probe(train, val, [FeatureInput(("layer-4_end",))], out, linear=QUICK, overwrite=True, progress=False,
              verbose=False)
    assert json.loads((out / "summary.json").read_text())["feature"] == "layer-4_end" != first["feature"]
    assert (out / "notes.txt").read_text() == "my notes"
    assert sorted(p.name for p in out.iterdir()) == sorted([
        "accuracy.png", "grid.jsonl", "head.json", "head.safetensors", "notes.txt",
        "summary.json", "val_predictions.npy"])


def test_a_second_writer_is_refused_naming_the_first(digits_data, tmp_path):
    train, val = digits_data
    holding, release = threading.Event(), threading.Event()

    def first_writer():
        with claim_output(tmp_path, result_file="summary.json", own_files=(), overwrite=False):
            holding.set()
            release.wait(10)

    thread = threading.Thread(target=first_writer)
    thread.start()
    try:
        assert holding.wait(10)
        with pytest.raises(FolderInUseError, match=r"another sail-vision run is writing there \(pid \d+ on "):
            run_probe(train, val, [FeatureInput(("pixels",))], tmp_path, method="knn", ks=[1], verbose=False)
    finally:
        release.set()
        thread.join()
    run_probe(train, val, [FeatureInput(("pixels",))], tmp_path, method="knn", ks=[1], verbose=False)  # free again
    assert not (tmp_path / LOCK_FILE).exists()  # removed when the run ends


def test_out_that_is_a_file_is_refused(digits_data, tmp_path):
    train, val = digits_data
    (tmp_path / "file").write_text("x")
    with pytest.raises(ProbeDataError, match="exists and is not a folder"):
        run_probe(train, val, [FeatureInput(("pixels",))], tmp_path / "file", method="knn", ks=[1], verbose=False)


def test_heads_of_another_format_version_are_refused(digits_data, tmp_path):
    train, val = digits_data
    run_probe(train, val, [FeatureInput(("pixels",))], tmp_path, method="knn", ks=[1], verbose=False)
    meta = json.loads((tmp_path / "head.json").read_text())
    meta["version"] = 1
    (tmp_path / "head.json").write_text(json.dumps(meta))
    with pytest.raises(ProbeDataError, match="older heads record no feature provenance"):
        load_probe(tmp_path)


def test_large_knn_bank_is_reloaded_from_its_folder_and_checked(digits_dirs, tmp_path, monkeypatch):
    import shutil

    from sail_vision.probes import knn

    monkeypatch.setattr(knn, "MAX_SAVED_BANK_BYTES", 1000)
    train_copy = tmp_path / "train"
    shutil.copytree(digits_dirs[0], train_copy)
    train, val = load_feature_dir(train_copy), load_feature_dir(digits_dirs[1])
    result = run_probe(train, val, [FeatureInput(("layer-4_mean",))], tmp_path / "out", method="knn", ks=[5],
                       verbose=False)
    meta = json.loads((tmp_path / "out" / "head.json").read_text())
    assert meta["bank"]["saved"] is False and meta["bank"]["feature_dir"] == str(train_copy.absolute())
    assert not (tmp_path / "out" / "head.safetensors").exists()
    np.testing.assert_array_equal(load_probe(tmp_path / "out").predict(val), result.val_predictions)
    labels = np.load(train_copy / "labels.npy")
    np.save(train_copy / "labels.npy", np.roll(labels, 1))  # the folder changed since the head was trained
    with pytest.raises(ProbeDataError, match="no longer matches"):
        load_probe(tmp_path / "out")


def test_a_head_json_edited_by_hand_is_refused(digits_data, tmp_path):
    train, val = digits_data
    run_probe(train, val, [FeatureInput(("pixels",))], tmp_path, method="linear",
              linear=LinearConfig(lrs=[0.1], weight_decays=[0.0], epochs=2), verbose=False)
    original = (tmp_path / "head.json").read_text()
    load_probe(tmp_path)  # untouched: loads
    meta = json.loads(original)
    meta["classes"] = [str(i) for i in range(meta["num_classes"])][::-1]  # same shapes: silently wrong names
    (tmp_path / "head.json").write_text(json.dumps(meta, indent=2))
    with pytest.raises(ProbeDataError, match=r"head.json: does not match head.safetensors \(its content differs"):
        load_probe(tmp_path)
    (tmp_path / "head.json").write_text(original)
    assert load_probe(tmp_path).classes == json.loads(original)["classes"]


def test_tensors_of_another_run_are_refused(digits_data, tmp_path):
    train, val = digits_data
    for name, lr in (("a", 0.1), ("b", 0.01)):
        run_probe(train, val, [FeatureInput(("pixels",))], tmp_path / name, method="linear",
                  linear=LinearConfig(lrs=[lr], weight_decays=[0.0], epochs=1), verbose=False)
    (tmp_path / "a" / "head.safetensors").write_bytes((tmp_path / "b" / "head.safetensors").read_bytes())
    with pytest.raises(ProbeDataError, match="does not match head.safetensors"):
        load_probe(tmp_path / "a")


def test_shapes_disagreeing_with_head_json_are_refused(tmp_path):
    from sail_vision.probes.results import check_head_binding, head_json_digest

    meta = {"tensor_shapes": {"weight": [3, 4]}}
    tensors = {"weight": np.zeros((4, 3), np.float32)}
    with pytest.raises(ProbeDataError, match=r"tensor shapes \{'weight': \[4, 3\]\} differ"):
        check_head_binding(meta, tensors, head_json_digest(meta), tmp_path / "head.json", tmp_path / "head.safetensors")
