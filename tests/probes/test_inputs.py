"""Choosing feature inputs (names, globs, all layers, DINOv2's concatenation) and the one concat helper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sail_vision.probes.errors import ProbeDataError
from sail_vision.probes.inputs import (FeatureInput, all_layer_inputs, concat_last_layers, parse_feature_inputs,
                                       stored_parts)

STORED = ["layer-10_mean", "layer-2_mean", "layer-2_end", "layer-10_end", "layer-4_mean", "layer-4_patch"]


def test_parse_feature_inputs_splits_concatenations_and_drops_duplicates():
    inputs = parse_feature_inputs(["layer-4_mean", "layer-3_end+layer-4_end", "layer-4_mean,layer-4_end"])
    assert [fi.name for fi in inputs] == ["layer-4_mean", "layer-3_end+layer-4_end", "layer-4_end"]
    assert inputs[1].parts == ("layer-3_end", "layer-4_end")
    with pytest.raises(ProbeDataError, match="twice"):
        parse_feature_inputs(["a+a"])
    with pytest.raises(ProbeDataError, match="no feature inputs"):
        parse_feature_inputs([",", ""])


def test_globs_match_stored_names_in_layer_order():
    inputs = parse_feature_inputs(["layer-*_mean"], STORED)
    assert [fi.name for fi in inputs] == ["layer-2_mean", "layer-4_mean", "layer-10_mean"]  # numeric, not text order
    mixed = parse_feature_inputs(["layer-4_mean", "layer-?_*"], STORED)
    assert [fi.name for fi in mixed] == ["layer-4_mean", "layer-2_end", "layer-2_mean", "layer-4_patch"]
    with pytest.raises(ProbeDataError, match="matches no stored feature"):
        parse_feature_inputs(["layer-*_cls"], STORED)
    with pytest.raises(ProbeDataError, match="cannot be part of a '\\+' concatenation"):
        parse_feature_inputs(["layer-*_end+layer-4_mean"], STORED)
    with pytest.raises(ProbeDataError, match="needs a feature folder"):
        parse_feature_inputs(["layer-*_mean"])


def test_all_layers_of_one_pool():
    assert [fi.name for fi in all_layer_inputs(STORED, "end")] == ["layer-2_end", "layer-10_end"]
    with pytest.raises(ProbeDataError, match="pools found: end, mean, patch"):
        all_layer_inputs(STORED, "cls")


def test_concat_last_layers_builds_the_dinov2_input():
    names = ["layer-2_end", "layer-3_end", "layer-4_end", "layer-4_mean", "layer-2_mean"]
    assert concat_last_layers(names, 2).parts == ("layer-3_end", "layer-4_end", "layer-4_mean")
    with pytest.raises(ProbeDataError, match="only 3 layers"):
        concat_last_layers(names, 4)
    with pytest.raises(ProbeDataError, match="layer-4_mean"):
        concat_last_layers(["layer-3_cls", "layer-4_cls"], 1, token="cls")
    with pytest.raises(ProbeDataError, match="at least 1"):
        concat_last_layers(names, 0)


def test_concat_is_one_helper_for_numpy_and_torch():
    rng = np.random.default_rng(0)
    arrays = {"a": rng.normal(size=(5, 2)).astype(np.float32), "b": rng.normal(size=(5, 3)).astype(np.float32)}
    both = FeatureInput(("b", "a"))
    rows = np.array([4, 0, 2])
    expected = np.concatenate([arrays["b"][rows], arrays["a"][rows]], axis=1)
    np.testing.assert_array_equal(both.concat(arrays, rows), expected)
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    np.testing.assert_array_equal(both.concat(tensors, torch.from_numpy(rows)).numpy(), expected)
    assert FeatureInput(("a",)).concat(arrays) is arrays["a"]  # one part, all rows: no copy


def test_layer_of_an_input_and_stored_parts():
    assert FeatureInput(("layer-12_end",)).layer == (12, "end")
    assert FeatureInput(("pixels",)).layer is None
    assert FeatureInput(("layer-1_end", "layer-2_end")).layer is None
    assert stored_parts([FeatureInput(("b", "a")), FeatureInput(("a",))]) == ["a", "b"]
