"""The one standardiser: statistics of the training rows, the same formula on numpy, torch and every path."""

from __future__ import annotations

import numpy as np
import torch

from sail_vision.probes.data import load_arrays
from sail_vision.probes.inputs import FeatureInput
from sail_vision.probes.linear import HeadStack, LinearConfig, LinearHead
from sail_vision.probes.standardize import Standardizer


def _data():
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(50, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -3.0]).astype(np.float32)
    b = rng.normal(size=(50, 2)).astype(np.float32)
    b[:, 1] = 7.0  # constant: std 1, so it is only centred
    return load_arrays({"a": a, "b": b}, np.arange(50) % 2), a, b


def test_statistics_of_a_concatenation_are_its_parts_statistics():
    data, a, b = _data()
    rows = np.arange(0, 50, 3)
    standardizer = Standardizer.fit(data, FeatureInput(("b", "a")), rows, chunk_rows=7)
    x = np.concatenate([b, a], axis=1)[rows].astype(np.float64)
    expected_std = x.std(0)
    expected_std[1] = 1.0
    np.testing.assert_allclose(standardizer.mean, x.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(standardizer.std, expected_std, rtol=1e-5)
    out = standardizer.apply(np.concatenate([b, a], axis=1)[rows])
    np.testing.assert_allclose(out.mean(0), [0, 0, 0, 0, 0], atol=1e-5)
    np.testing.assert_allclose(out.std(0)[[0, 2, 3, 4]], 1.0, rtol=1e-4)


def test_numpy_torch_and_saved_forms_give_identical_numbers():
    data, a, b = _data()
    standardizer = Standardizer.fit(data, FeatureInput(("a",)))
    by_numpy = standardizer.apply(a)
    by_torch = standardizer.apply(torch.from_numpy(a)).numpy()
    np.testing.assert_array_equal(by_numpy, by_torch)
    reloaded = Standardizer.from_tensors(standardizer.tensors())
    np.testing.assert_array_equal(reloaded.apply(a), by_numpy)
    assert Standardizer.from_tensors({"weight": np.zeros(1)}) is None


def test_training_and_prediction_standardise_identically():
    data, a, _ = _data()
    standardizer = Standardizer.fit(data, FeatureInput(("a",)))
    stack = HeadStack(3, 2, [0.1], [0.0], standardizer, LinearConfig())
    head = LinearHead.from_saved({"parts": ["a"]}, {"weight": np.eye(2, 3, dtype=np.float32),
                                                   "bias": np.zeros(2, np.float32), **standardizer.tensors()})
    x = torch.from_numpy(a)
    np.testing.assert_array_equal(head.logits(x).numpy(), stack.prepare(x)[:, :2].numpy())
