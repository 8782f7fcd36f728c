"""Chunks of rows moved once to the device, read one chunk ahead, in a seeded order."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sail_vision.probes.data import load_arrays
from sail_vision.probes.streaming import epoch_plan, prefetched, stream_chunks


def _ids(n=1000, dtype=np.float32, tmp_path=None):
    x = np.arange(n, dtype=dtype)[:, None].repeat(3, 1)
    if tmp_path is not None:
        np.save(tmp_path / "x.npy", x)
        return load_arrays(tmp_path / "x.npy", np.arange(n) % 4)
    return load_arrays(x, np.arange(n) % 4, name="x")


def _epoch(data, rows, rng, **kw):
    seen = []
    for chunk in stream_chunks(data, ["x"], rows, rng=rng, chunk_rows=200, block_rows=50, **kw):
        assert chunk.features["x"].dtype == torch.float32
        for pick in chunk.batches(64):
            ids = chunk.features["x"][pick][:, 0].long()
            assert torch.equal(chunk.labels[pick], ids % 4)
            seen.extend(ids.tolist())
    return seen


def test_shuffled_stream_visits_each_row_once_per_epoch(tmp_path):
    data = _ids(tmp_path=tmp_path)
    rows = np.sort(np.random.default_rng(0).choice(1000, 700, replace=False))
    rng = np.random.default_rng(1)
    first, second = _epoch(data, rows, rng), _epoch(data, rows, rng)
    assert sorted(first) == rows.tolist() and sorted(second) == rows.tolist()
    assert first != sorted(first) and first != second


def test_order_depends_on_the_seed_only_not_on_prefetching(tmp_path):
    data = _ids(tmp_path=tmp_path)
    rows = np.arange(1000)
    with_prefetch = _epoch(data, rows, np.random.default_rng(5))
    without = _epoch(data, rows, np.random.default_rng(5), prefetch=False)
    assert with_prefetch == without


def test_ordered_stream_keeps_file_order_and_float16_becomes_float32(tmp_path):
    data = _ids(n=130, dtype=np.float16, tmp_path=tmp_path)
    chunks = list(stream_chunks(data, ["x"], chunk_rows=50))
    assert [c.size for c in chunks] == [50, 50, 30]
    values = torch.cat([c.features["x"][:, 0] for c in chunks])
    assert values.dtype == torch.float32 and values.tolist() == list(range(130))
    assert chunks[0].order is None and torch.equal(torch.cat(list(chunks[2].batches(8))), torch.arange(30))


def test_plan_is_computed_on_the_calling_thread_in_order():
    rng = np.random.default_rng(0)
    plan = list(epoch_plan(np.arange(10), rng, chunk_rows=4, block_rows=2))
    again = np.random.default_rng(0)
    assert [p[0].tolist() for p in plan] == [c.tolist() for c, _ in epoch_plan(np.arange(10), again, 4, 2)]
    assert list(prefetched(range(5), lambda i: i * i)) == [0, 1, 4, 9, 16]
    assert list(prefetched([], lambda i: i)) == []


def test_errors_while_reading_ahead_reach_the_caller():
    def load(i):
        if i == 2:
            raise ValueError("disk gone")
        return i

    with pytest.raises(ValueError, match="disk gone"):
        list(prefetched(range(4), load))


def test_cuda_chunks_equal_cpu_chunks_and_travel_in_the_stored_dtype(tmp_path, cuda_device):
    data = _ids(dtype=np.float16, tmp_path=tmp_path)
    rows = np.arange(1000)
    pinned = data.read_pinned("x", np.array([3, 1, 2]))
    assert pinned.is_pinned() and pinned.dtype == torch.float16  # half the bytes of float32 on the wire
    cpu = list(stream_chunks(data, ["x"], rows, rng=np.random.default_rng(3), chunk_rows=300, block_rows=50))
    gpu = list(stream_chunks(data, ["x"], rows, rng=np.random.default_rng(3), chunk_rows=300, block_rows=50,
                             device=cuda_device))
    assert len(cpu) == len(gpu)
    for a, b in zip(cpu, gpu):
        assert b.features["x"].device.type == "cuda" and b.features["x"].dtype == torch.float32
        assert torch.equal(a.features["x"], b.features["x"].cpu())
        assert torch.equal(a.labels, b.labels.cpu()) and torch.equal(a.order, b.order.cpu())
