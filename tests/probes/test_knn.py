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


def test_k_larger_than_the_bank_is_refused():
    x = np.eye(3, dtype=np.float32)
    data = load_arrays(x, np.arange(3), name="pixels")
    assert evaluate_knn(data, np.arange(3), data, None, PIXELS, [1, 3], 3)[1] == {"top1": 100.0, "top5": 100.0}
    with pytest.raises(ProbeDataError, match=r"--ks 200: more neighbours than the k-NN bank has rows \(3\)"):
        evaluate_knn(data, np.arange(3), data, None, PIXELS, [1, 20, 200], 3)
    with pytest.raises(ProbeDataError, match=r"bank has rows \(0\)"):
        nearest_neighbours(data, np.arange(0), data, None, PIXELS, 1)


class CountingArray:
    """A (rows, D) feature array that counts how often each row is read."""

    def __init__(self, array: np.ndarray):
        self.array, self.shape, self.dtype = array, array.shape, array.dtype
        self.reads = np.zeros(array.shape[0], dtype=np.int64)

    def __getitem__(self, index):
        np.add.at(self.reads, np.arange(self.shape[0])[index], 1)
        return self.array[index]

    def __len__(self):
        return self.shape[0]


def _reference_neighbours(bank_x, bank_labels, query_x, k, chunk_rows):
    """The previous algorithm: for each query chunk, the whole bank again, chunk by chunk."""
    normed = lambda a: torch.nn.functional.normalize(torch.from_numpy(a), dim=1)  # noqa: E731
    sims_out, labels_out = [], []
    for q0 in range(0, len(query_x), min(chunk_rows, 2048)):
        query = normed(query_x[q0:q0 + min(chunk_rows, 2048)])
        best_sims, best_rows = torch.full((query.shape[0], 0), -2.0), torch.zeros((query.shape[0], 0), dtype=torch.long)
        for b0 in range(0, len(bank_x), chunk_rows):
            sims = query @ normed(bank_x[b0:b0 + chunk_rows]).t()
            top = sims.topk(min(k, sims.shape[1]), dim=1)
            best_sims = torch.cat([best_sims, top.values], 1)
            best_rows = torch.cat([best_rows, top.indices + b0], 1)
            keep = best_sims.topk(min(k, best_sims.shape[1]), dim=1)
            best_sims, best_rows = keep.values, best_rows.gather(1, keep.indices)
        sims_out.append(best_sims)
        labels_out.append(torch.from_numpy(bank_labels)[best_rows])
    return torch.cat(sims_out), torch.cat(labels_out)


@pytest.mark.parametrize("held_query_bytes", [None, 2 * 2048 * (16 * 4 + 20 * 12)])
def test_each_bank_row_is_read_once_per_evaluation(held_query_bytes):
    """50,000 bank rows and 5,000 queries (3 query chunks): the bank is read once, not once per query chunk;
    with room for only 2 of the 3 query chunks on the device, twice (two passes)."""
    rng = np.random.default_rng(0)
    bank_x = rng.normal(size=(50_000, 16)).astype(np.float32)
    bank_y = rng.integers(0, 10, 50_000)
    query_x = rng.normal(size=(5_000, 16)).astype(np.float32)
    bank = load_arrays(bank_x, bank_y, name="pixels")
    counting = CountingArray(bank_x)
    bank.features["pixels"] = counting
    queries = load_arrays(query_x, rng.integers(0, 10, 5_000), name="pixels")
    kwargs = {} if held_query_bytes is None else {"held_query_bytes": held_query_bytes}
    sims, labels = nearest_neighbours(bank, np.arange(50_000), queries, None, PIXELS, 20, chunk_rows=16384,
                                      **kwargs)
    assert np.all(counting.reads == (1 if held_query_bytes is None else 2)), np.unique(counting.reads)
    ref_sims, ref_labels = _reference_neighbours(bank_x, bank_y, query_x, 20, 16384)
    assert torch.equal(sims, ref_sims) and torch.equal(labels, ref_labels)  # the same numbers as before
    counting.reads[:] = 0
    evaluate_knn(bank, np.arange(50_000), queries, None, PIXELS, [10, 20], 10)
    assert np.all(counting.reads == 1)


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


def test_queries_held_at_once_are_bounded_with_their_top_k(monkeypatch):
    """Low-dimensional features with a large k: the running top-k counts in the memory held per pass."""
    import sail_vision.probes.knn as knn

    rng = np.random.default_rng(1)
    bank = load_arrays(rng.normal(size=(3000, 4)).astype(np.float32), rng.integers(0, 3, 3000), name="pixels")
    queries = load_arrays(rng.normal(size=(5000, 4)).astype(np.float32), rng.integers(0, 3, 5000), name="pixels")
    passes = []
    real = knn.stream_chunks

    def counting(data, *args, **kwargs):
        if data is queries:
            passes.append(1)
        return real(data, *args, **kwargs)

    monkeypatch.setattr(knn, "stream_chunks", counting)
    held = 2048 * (4 * 4 + 12 * 1000)  # room for one block of 2,048 queries with k = 1000
    sims, _ = nearest_neighbours(bank, np.arange(3000), queries, None, PIXELS, 1000, held_query_bytes=held)
    assert len(passes) == 3 and sims.shape == (5000, 1000)  # 2,048 + 2,048 + 904 queries
