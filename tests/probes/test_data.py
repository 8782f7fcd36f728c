"""Loading, labels and class names (alignment by name), validation (every bad-input kind), statistics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sail_vision.errors import SailVisionError
from sail_vision.feature_store import FeatureStoreError, write_feature_dir
from sail_vision.probes.data import (ProbeDataError, feature_stats, load_arrays, load_feature_dir, split_holdout,
                                     validate_train_val)
from sail_vision.probes.labels import align_classes, read_classes_file
from sail_vision.probes.inputs import FeatureInput

PIXELS = [FeatureInput(("pixels",))]


def _data(n=40, d=5, classes=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)).astype(np.float32), np.arange(n) % classes


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


def test_unnamed_val_labels_unseen_in_train_are_compared_as_numbers():
    x, y = _data(classes=3)
    val = load_arrays(x, np.where(y == 2, 5, y), name="pixels")
    with pytest.raises(ProbeDataError, match="labels 5 never occur in train.*compared as numbers"):
        validate_train_val(load_arrays(x, y, name="pixels"), val, PIXELS)
    num_classes, same = validate_train_val(load_arrays(x, y, name="pixels"), load_arrays(x, y, name="pixels"), PIXELS)
    assert num_classes == 3 and same.classes is None
    np.testing.assert_array_equal(same.labels, y)


def test_val_is_renumbered_to_train_classes_by_name():
    x, _ = _data(n=6)
    train = load_arrays(x, [0, 1, 2, 0, 1, 2], name="pixels", classes=["cat", "dog", "zebra"])
    val = load_arrays(x, [0, 1, 0, 1, 1, 0], name="pixels", classes=["dog", "zebra"])  # dog=0, zebra=1 here
    num_classes, aligned = validate_train_val(train, val, PIXELS)
    assert num_classes == 3 and aligned.classes == ["cat", "dog", "zebra"]
    np.testing.assert_array_equal(aligned.labels, [1, 2, 1, 2, 2, 1])
    assert val.labels.tolist() == [0, 1, 0, 1, 1, 0]  # the caller's data is left as it was


def test_val_class_unknown_to_train_is_refused_with_both_lists():
    x, _ = _data(n=4)
    train = load_arrays(x, [0, 1, 0, 1], name="pixels", classes=["cat", "dog"])
    val = load_arrays(x, [0, 1, 1, 0], name="pixels", classes=["dog", "zebra"])
    with pytest.raises(ProbeDataError) as info:
        validate_train_val(train, val, PIXELS)
    message = str(info.value)
    assert "classes zebra are not train classes" in message
    assert "val classes: dog, zebra" in message and "train classes" in message and "cat, dog" in message


def test_val_class_named_in_train_but_without_training_rows_is_refused():
    x, _ = _data(n=4)
    train = load_arrays(x, [0, 1, 0, 1], name="pixels", classes=["cat", "dog", "zebra"])
    val = load_arrays(x, [2, 1, 1, 0], name="pixels", classes=["cat", "dog", "zebra"])
    with pytest.raises(ProbeDataError, match="zebra have no training row"):
        validate_train_val(train, val, PIXELS)


def test_names_on_one_side_only_are_refused():
    x, y = _data()
    named = load_arrays(x, y, name="pixels", classes=["a", "b", "c"])
    bare = load_arrays(x, y, name="pixels")
    for train, val in ((named, bare), (bare, named)):
        with pytest.raises(ProbeDataError, match="bare numbers.*--classes FILE"):
            align_classes(train, val)


def test_labels_over_the_class_count_are_refused(tmp_path):
    x, y = _data()
    with pytest.raises(ProbeDataError, match="label 2 .* but only 2 class names"):
        load_arrays(x, y, name="pixels", classes=["a", "b"])
    folder = write_feature_dir(tmp_path / "f", {"layer-1_mean": x}, labels=y, classes=["a", "b"])
    with pytest.raises(ProbeDataError, match="labels.npy: label 2 .*only 2 class names"):
        load_feature_dir(folder.path)


def test_label_ids_instead_of_indices_are_refused():
    x, _ = _data(n=4)
    with pytest.raises(ProbeDataError, match="labels go up to 1000000000 but only 2 distinct"):
        load_arrays(x, [0, 10 ** 9, 0, 10 ** 9], name="pixels")
    assert load_arrays(x, [0, 7, 3, 7], name="pixels").labels.max() == 7  # gaps are fine


def test_classes_file(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\n\n")
    assert read_classes_file(tmp_path / "classes.txt") == ["cat", "dog"]
    (tmp_path / "dup.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(ProbeDataError, match="'cat' appears twice"):
        read_classes_file(tmp_path / "dup.txt")
    (tmp_path / "gap.txt").write_text("cat\n\ndog\n")
    with pytest.raises(ProbeDataError, match="class name 1 is empty"):
        read_classes_file(tmp_path / "gap.txt")
    with pytest.raises(ProbeDataError, match="no such file"):
        read_classes_file(tmp_path / "missing.txt")


def test_classes_name_a_folder_without_names_but_do_not_rename_a_named_one(tmp_path):
    x, y = _data()
    bare = write_feature_dir(tmp_path / "bare", {"layer-1_mean": x}, labels=y)
    assert load_feature_dir(bare.path, classes=["a", "b", "c"]).classes == ["a", "b", "c"]
    named = write_feature_dir(tmp_path / "named", {"layer-1_mean": x}, labels=y, classes=["a", "b", "c"])
    assert load_feature_dir(named.path, classes=["a", "b", "c"]).classes == ["a", "b", "c"]
    with pytest.raises(ProbeDataError, match="already named"):
        load_feature_dir(named.path, classes=["x", "y", "z"])
    np.save(tmp_path / "y.npy", y)
    replaced = load_feature_dir(named.path, labels=tmp_path / "y.npy")
    assert replaced.classes is None  # replaced labels lose the folder's names unless --classes names them


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
    with pytest.raises(ProbeDataError, match="'layer-1_patch' holds patch tokens"):  # asked for later, by name
        data.subset_features(["layer-1_patch"])
    with pytest.raises(FeatureStoreError, match="no feature 'layer-9_mean'"):
        load_feature_dir(folder.path, ["layer-9_mean"])


def test_invalid_rows_are_dropped_with_their_labels_and_paths_kept(tmp_path):
    x, y = _data()
    valid = np.ones(40, bool)
    valid[[3, 10]] = False
    paths = [f"/img/{i}.png" for i in range(40)]
    folder = write_feature_dir(tmp_path / "f", {"layer-1_mean": x}, labels=y, valid=valid, paths=paths)
    data = load_feature_dir(folder.path)
    assert isinstance(data.features["layer-1_mean"], np.memmap)  # never copied into RAM
    assert data.num_rows == 38 and data.total_items == 40 and data.paths == paths
    np.testing.assert_array_equal(data.item_of_row, np.flatnonzero(valid))
    np.testing.assert_array_equal(data.gather(FeatureInput(("layer-1_mean",))), x[valid])
    np.testing.assert_array_equal(data.labels, y[valid])
    rows = np.array([0, 3, 5, 37])
    np.testing.assert_array_equal(data.read(["layer-1_mean"], rows)["layer-1_mean"], x[valid][rows])
    out = np.empty((4, 5), np.float32)
    np.testing.assert_array_equal(data.read_into("layer-1_mean", rows, out), x[valid][rows])
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


def test_label_patterns_of_train_and_val_are_aligned_by_name(tmp_path):
    x, _ = _data(n=4)
    pattern = "^(cat|dog)"
    train = load_feature_dir(write_feature_dir(tmp_path / "t", {"layer-1_mean": x},
                                               paths=["cat_1", "dog_1", "cat_2", "dog_2"]).path, label_pattern=pattern)
    val = load_feature_dir(write_feature_dir(tmp_path / "v", {"layer-1_mean": x},
                                             paths=["dog_3", "dog_4", "dog_5", "dog_6"]).path, label_pattern=pattern)
    assert val.labels.tolist() == [0, 0, 0, 0]  # "dog" is class 0 of val's own sorted list...
    _, aligned = validate_train_val(train, val, [FeatureInput(("layer-1_mean",))])
    assert aligned.labels.tolist() == [1, 1, 1, 1]  # ...and class 1 of train's


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


def test_too_few_training_rows_to_hold_out():
    with pytest.raises(ProbeDataError, match="of 4 training rows holds out 0"):
        split_holdout(np.array([0, 1, 0, 1]), 0.1, seed=0)


def test_val_features_made_unlike_train_features_are_refused(tmp_path, feature_folder):
    x, y = _data()
    inputs = [FeatureInput(("layer-1_mean",))]
    train = load_feature_dir(feature_folder(tmp_path / "t", {"layer-1_mean": x}, labels=y).path)
    same = load_feature_dir(feature_folder(tmp_path / "s", {"layer-1_mean": x}, labels=y).path)
    assert validate_train_val(train, same, inputs)[0] == 3
    other = load_feature_dir(feature_folder(tmp_path / "o", {"layer-1_mean": x}, labels=y,
                                            checkpoint={"weights_digest": "another model"}).path)
    with pytest.raises(ProbeDataError, match="were not made like train's .*checkpoint weights_digest another model"):
        validate_train_val(train, other, inputs)
    with pytest.raises(ProbeDataError, match="plain arrays with no record"):
        validate_train_val(train, load_arrays({"layer-1_mean": x}, y), inputs)


def test_a_folder_whose_images_all_failed_is_refused(tmp_path):
    x, y = _data(n=4)
    folder = write_feature_dir(tmp_path / "f", {"layer-1_mean": x}, labels=y, valid=np.zeros(4, bool))
    data = load_feature_dir(folder.path)
    with pytest.raises(ProbeDataError, match="has no usable rows \\(4 rows, all of failed images\\)"):
        validate_train_val(load_arrays({"layer-1_mean": x}, y), data, [FeatureInput(("layer-1_mean",))])
    with pytest.raises(ProbeDataError, match="train data .* has no usable rows"):
        validate_train_val(data, None, [FeatureInput(("layer-1_mean",))])
