"""Loading, validation (every bad-input kind), statistics and chunked shuffled streaming."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sail_vision.errors import SailVisionError
from sail_vision.feature_store import FeatureStoreError, write_feature_dir
from sail_vision.probes.data import (FeatureInput, ProbeDataError, concat_last_layers, feature_stats, load_arrays,
                                     load_feature_dir, parse_feature_inputs, split_holdout, stream_batches,
                                     validate_train_val)

PIXELS = [FeatureInput(("pixels",))]


def _data(n=40, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), np.arange(n) % classes


def test_parse_feature_inputs_splits_concatenations_and_drops_duplicates():
    inputs = parse_feature_inputs(["layer-4_mean", "layer-3_end+layer-4_end", "layer-4_mean,layer-4_end"])
    assert [fi.name for fi in inputs] == ["layer-4_mean", "layer-3_end+layer-4_end", "layer-4_end"]
    assert inputs[1].parts == ("layer-3_end", "layer-4_end")
    with pytest.raises(ProbeDataError, match="twice"):
        parse_feature_inputs(["a+a"])


def test_concat_last_layers_builds_the_dinov2_input():
    names = ["layer-2_end", "layer-3_end", "layer-4_end", "layer-4_mean", "layer-2_mean"]
    assert concat_last_layers(names, 2).parts == ("layer-3_end", "layer-4_end", "layer-4_mean")
    with pytest.raises(ProbeDataError, match="only 3 layers"):
        concat_last_layers(names, 4)
    with pytest.raises(ProbeDataError, match="layer-4_mean"):
        concat_last_layers(["layer-3_cls", "layer-4_cls"], 1, token="cls")


def test_features_and_labels_of_different_lengths():
    x, y = _data()
    with pytest.raises(ProbeDataError, match="39 labels for 40 feature rows"):
        load_arrays(x, y[:-1])


def test_missing_labels_are_named(tmp_path):
    x, y = _data()
    folder = write_feature_dir(tmp_path / "f", {"layer-1_mean": x})
    train = load_feature_dir(folder.path)
    with pytest.raises(ProbeDataError, match="has no labels"):
        validate_train_val(train, None, [FeatureInput(("layer-1_mean",))])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_reports_count_and_first_row(bad, tmp_path):
    x, y = _data()
    x[7, 1] = bad
    x[7, 3] = bad
    x[20, 0] = bad
    np.save(tmp_path / "x.npy", x)
    train = load_arrays(tmp_path / "x.npy", y)
    with pytest.raises(ProbeDataError, match=r"3 NaN/Inf values, first at row 7") as info:
        validate_train_val(train, None, [FeatureInput(("x",))], chunk_rows=8)
    assert "x.npy" in str(info.value)


def test_single_class_is_an_error():
    x, _ = _data()
    with pytest.raises(ProbeDataError, match="at least two classes"):
        validate_train_val(load_arrays(x, np.full(40, 3), name="pixels"), None, PIXELS)


def test_val_classes_unseen_in_train():
    x, y = _data(classes=3)
    val = load_arrays(x, np.where(y == 2, 5, y), name="pixels")
    with pytest.raises(ProbeDataError, match="1 classes never seen in train"):
        validate_train_val(load_arrays(x, y, name="pixels"), val, PIXELS)


def test_dims_must_match_between_train_and_val():
    x, y = _data()
    with pytest.raises(ProbeDataError, match="5 dims in train"):
        validate_train_val(load_arrays(x, y, name="pixels"), load_arrays(x[:, :4], y, name="pixels"), PIXELS)


def test_negative_and_non_integer_labels():
    x, y = _data()
    with pytest.raises(ProbeDataError, match="negative label -1 at row 0"):
        load_arrays(x, np.where(np.arange(40) == 0, -1, y))
    with pytest.raises(ProbeDataError, match="whole numbers"):
        load_arrays(x, y + 0.5)


def test_unfinished_extraction_is_refused(tmp_path):
    x, y = _data()
    folder = write_feature_dir(tmp_path / "f", {"layer-1_mean": x}, labels=y)
    manifest = json.loads((folder.path / "manifest.json").read_text())
    manifest["complete"] = False
    (folder.path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FeatureStoreError, match="unfinished"):
        load_feature_dir(folder.path)
    assert issubclass(FeatureStoreError, SailVisionError)


def test_patch_features_and_unknown_names_are_refused(tmp_path):
    x, y = _data()
    folder = write_feature_dir(tmp_path / "f", {"layer-1_mean": x, "layer-1_patch": np.zeros((40, 2, 2, 5))},
                               labels=y)
    with pytest.raises(ProbeDataError, match="patch tokens"):
        load_feature_dir(folder.path, ["layer-1_patch"])
    data = load_feature_dir(folder.path)  # default: pooled features only
    assert list(data.features) == ["layer-1_mean"]
    with pytest.raises(FeatureStoreError, match="no feature 'layer-9_mean'"):
        load_feature_dir(folder.path, ["layer-9_mean"])


def test_invalid_rows_are_dropped_with_their_labels(tmp_path):
    x, y = _data()
    valid = np.ones(40, bool)
    valid[[3, 10]] = False
    folder = write_feature_dir(tmp_path / "f", {"layer-1_mean": x}, labels=y, valid=valid)
    data = load_feature_dir(folder.path)
    assert isinstance(data.features["layer-1_mean"], np.memmap)  # never copied into RAM
    assert data.num_rows == 38
    np.testing.assert_array_equal(data.gather(FeatureInput(("layer-1_mean",))), x[valid])
    np.testing.assert_array_equal(data.labels, y[valid])
    rows = np.array([0, 3, 5, 37])
    np.testing.assert_array_equal(data.read(["layer-1_mean"], rows)["layer-1_mean"], x[valid][rows])
    mean, _ = feature_stats(data, "layer-1_mean")
    np.testing.assert_allclose(mean, x[valid].mean(0), rtol=1e-5, atol=1e-6)
    x_bad = x.copy()
    x_bad[3, 0] = np.nan  # a NaN in a failed (invalid) row is not a feature of the probe
    folder = write_feature_dir(tmp_path / "g", {"layer-1_mean": x_bad}, labels=y, valid=valid)
    validate_train_val(load_feature_dir(folder.path), None, [FeatureInput(("layer-1_mean",))])


def test_label_pattern_from_file_names(tmp_path):
    x, _ = _data(n=4)
    paths = ["/a/cat_1.jpg", "/a/dog_1.jpg", "/b/cat_2.png", "/b/dog.png"]
    folder = write_feature_dir(tmp_path / "f", {"layer-1_mean": x}, paths=paths)
    data = load_feature_dir(folder.path, label_pattern="^(cat|dog)")
    assert data.classes == ["cat", "dog"]
    np.testing.assert_array_equal(data.labels, [0, 1, 0, 1])
    with pytest.raises(ProbeDataError, match="does not match"):
        load_feature_dir(folder.path, label_pattern="^(cat)")


def test_stream_batches_visits_each_row_once_per_epoch_in_shuffled_order(tmp_path):
    n = 1000
    x = np.arange(n, dtype=np.float32)[:, None].repeat(3, 1)
    np.save(tmp_path / "x.npy", x)
    data = load_arrays(tmp_path / "x.npy", np.arange(n) % 4)
    rows = np.sort(np.random.default_rng(0).choice(n, 700, replace=False))
    rng = np.random.default_rng(1)
    epochs = []
    for _ in range(2):
        seen = []
        for arrays, labels in stream_batches(data, ["x"], rows, 64, rng, chunk_rows=200, block_rows=50):
            ids = arrays["x"][:, 0].astype(int)
            np.testing.assert_array_equal(labels, ids % 4)
            assert arrays["x"].dtype == np.float32
            seen.extend(ids.tolist())
        assert sorted(seen) == rows.tolist()
        epochs.append(seen)
    assert epochs[0] != sorted(epochs[0]) and epochs[0] != epochs[1]


def test_feature_stats_match_numpy_in_chunks():
    x, y = _data(n=97, d=6)
    x[:, 2] = 5.0  # constant dimension: std stays 1 so standardising does not divide by zero
    data = load_arrays(x.astype(np.float16), y, name="f")
    rows = np.arange(0, 97, 2)
    mean, std = feature_stats(data, "f", rows, chunk_rows=10)
    ref = x.astype(np.float16).astype(np.float64)[rows]
    np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-5, atol=1e-6)
    expected = ref.std(0)
    expected[2] = 1.0
    np.testing.assert_allclose(std, expected, rtol=1e-4)


def test_holdout_split_is_seeded_stratified_and_disjoint():
    labels = np.arange(200) % 4
    fit, held = split_holdout(labels, 0.1, seed=3)
    assert held.size == 20 and fit.size == 180 and not np.intersect1d(fit, held).size
    assert np.bincount(labels[held]).tolist() == [5, 5, 5, 5]
    np.testing.assert_array_equal(held, split_holdout(labels, 0.1, seed=3)[1])
    assert not np.array_equal(held, split_holdout(labels, 0.1, seed=4)[1])
    with pytest.raises(ProbeDataError, match="between 0 and 1"):
        split_holdout(labels, 1.5, seed=0)
