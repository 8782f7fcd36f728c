"""Cosine k-NN with temperature-weighted votes, in chunks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sail_vision.probes import FeatureInput, run_probe
from sail_vision.probes.data import load_arrays
from sail_vision.probes.errors import ProbeDataError
from sail_vision.probes.knn import check_ks, evaluate_knn, nearest_neighbours, vote

PIXELS = FeatureInput(("pixels",))


def test_knn_on_digits_is_within_two_points_of_sklearn_cosine_knn(digits_split, digits_data):
    from sklearn.neighbors import KNeighborsClassifier

    x_train, x_test, y_train, y_test = digits_split
    reference = 100 * KNeighborsClassifier(metric="cosine").fit(x_train, y_train).score(x_test, y_test)
    train, val = digits_data
    result = run_probe(train, val, [PIXELS], None, method="knn", progress=False, verbose=False)
    assert abs(result.summary["top1"] - reference) <= 2.0, (result.summary["top1"], reference)
    assert result.summary["k"] in (10, 20, 100, 200)
    assert [r["k"] for r in result.records] == [10, 20, 100, 200]


def test_chunked_neighbours_equal_brute_force():
    rng = np.random.default_rng(0)
    bank_x = rng.normal(size=(230, 7)).astype(np.float32)
    query_x = rng.normal(size=(50, 7)).astype(np.float32)
    bank = load_arrays(bank_x, rng.integers(0, 5, 230), name="pixels")
    queries = load_arrays(query_x, rng.integers(0, 5, 50), name="pixels")
    rows = np.arange(230)
    sims, labels = nearest_neighbours(bank, rows, queries, None, PIXELS, 9, chunk_rows=32)
    normed = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    full = normed(query_x) @ normed(bank_x).T
    order = np.argsort(-full, axis=1)[:, :9]
    np.testing.assert_allclose(sims.numpy(), np.take_along_axis(full, order, 1), atol=1e-5)
    np.testing.assert_array_equal(labels.numpy(), bank.labels[order])


def test_votes_are_temperature_weighted():
    sims = torch.tensor([[0.9, 0.5, 0.4]])
    labels = torch.tensor([[0, 1, 1]])
    sharp = vote(sims, labels, 3, 2, temperature=0.07)
    flat = vote(sims, labels, 3, 2, temperature=10.0)
    assert sharp.argmax().item() == 0 and flat.argmax().item() == 1
    np.testing.assert_allclose(sharp[0, 1].item(), np.exp(0.5 / 0.07) + np.exp(0.4 / 0.07), rtol=1e-5)


def test_k_larger_than_the_bank_uses_every_row():
    x = np.eye(3, dtype=np.float32)
    data = load_arrays(x, np.arange(3), name="pixels")
    result = evaluate_knn(data, np.arange(3), data, None, PIXELS, [1, 200], 3)
    assert result[1] == {"top1": 100.0, "top5": 100.0}


@pytest.mark.parametrize("ks, temperature, message", [
    ([0], 0.07, "whole numbers >= 1"), ([2.5], 0.07, "whole numbers >= 1"), ([], 0.07, "grid is empty"),
    ([5], 0.0, "--temperature must be a positive"),
])
def test_bad_ks_and_temperature_are_refused(ks, temperature, message):
    with pytest.raises(ProbeDataError, match=message):
        check_ks(ks, temperature)


def test_knn_on_cuda_equals_knn_on_cpu(cuda_device):
    rng = np.random.default_rng(0)
    bank = load_arrays(rng.normal(size=(500, 16)).astype(np.float32), rng.integers(0, 5, 500), name="pixels")
    queries = load_arrays(rng.normal(size=(70, 16)).astype(np.float32), rng.integers(0, 5, 70), name="pixels")
    for chunk_rows in (64, 1000):  # the bank streamed in chunks, and kept on the device whole
        cpu_sims, cpu_labels = nearest_neighbours(bank, np.arange(500), queries, None, PIXELS, 7, chunk_rows)
        gpu_sims, gpu_labels = nearest_neighbours(bank, np.arange(500), queries, None, PIXELS, 7, chunk_rows,
                                                  device=cuda_device)
        torch.testing.assert_close(gpu_sims, cpu_sims, rtol=1e-5, atol=1e-5)
        assert torch.equal(gpu_labels, cpu_labels)
