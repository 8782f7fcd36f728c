"""Provenance of probe features: what is compared before a saved head predicts, and what is not."""

from __future__ import annotations

import copy

from sail_vision.probes.provenance import arrays_provenance, folder_provenance, input_provenance, mismatches

MANIFEST = {"checkpoint": {"path": "/a/SAIL-7B", "weights_digest": "d1", "config_fingerprint": "f1"},
            "preprocessing": {"resolution": 224, "patch_size": 32, "max_tokens": 4096, "norm": False},
            "dtypes": {"compute": "bfloat16", "save": "float16"}}


def _features(manifest=MANIFEST, parts=("layer-32_mean",), dims=(4096,)):
    return input_provenance(folder_provenance(manifest), parts, dims)


def test_identical_features_match_and_moved_checkpoints_or_other_dtypes_do_not_matter():
    assert mismatches(_features(), _features()) == []
    other = copy.deepcopy(MANIFEST)
    other["checkpoint"]["path"] = "/elsewhere/SAIL-7B"
    other["dtypes"] = {"compute": "float32", "save": "float32"}
    other["preprocessing"]["a_new_setting"] = "described by a newer extractor"
    assert mismatches(_features(), _features(other)) == []


def test_each_difference_is_named():
    other = copy.deepcopy(MANIFEST)
    other["checkpoint"]["weights_digest"] = "d2"
    other["preprocessing"]["resolution"] = [448, 448]
    found = mismatches(_features(), _features(other, parts=("layer-31_mean",)))
    assert found == ["checkpoint weights_digest d2 != d1", "preprocessing resolution [448, 448] != 224",
                     "features layer-31_mean (4096 dims) != layer-32_mean (4096 dims)"]
    assert _features()["features"] == [{"name": "layer-32_mean", "layer": 32, "pool": "mean", "dim": 4096}]


def test_a_folder_without_a_model_record_does_not_match_one_with_it():
    assert "checkpoint weights_digest None != d1" in mismatches(_features(), _features({}))
    assert "preprocessing None != " in mismatches(_features(), _features({"checkpoint": MANIFEST["checkpoint"]}))[0]


def test_arrays_and_folders_never_match():
    arrays = input_provenance(arrays_provenance(["/x.npy"]), ("layer-32_mean",), (4096,))
    assert "plain arrays with no record" in mismatches(_features(), arrays)[0]
    assert "trained on plain arrays" in mismatches(arrays, _features())[0]
    other_file = input_provenance(arrays_provenance(["/y.npy"]), ("layer-32_mean",), (4096,))
    assert mismatches(arrays, other_file) == []  # arrays carry no model record: only their width is checked
