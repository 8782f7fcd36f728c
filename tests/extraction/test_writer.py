"""In-place .npy writing, the status file and the background writer's commit order."""

from __future__ import annotations

import numpy as np
import pytest

from sail_vision.extraction.writer import (DATA_ALIGN, DONE, FAILED, PENDING, ArraySpec, BackgroundWriter,
                                           FailureLog, OutputArrays, RowStatus, create_array_file, failure_record)


def _files(tmp_path):
    specs = [ArraySpec("layer-1_mean", "layer-1_mean.npy", (5, 3), "float16", "pooled", 1, "mean"),
             ArraySpec("layer-1_patch", "layer-1_patch.npy", (7, 3), "float32", "rows", 1, "patch",
                       "layer-1_patch_offsets.npy")]
    for spec in specs:
        create_array_file(tmp_path / spec.file, spec.shape, spec.dtype)
    offsets = {"layer-1_patch": np.array([0, 1, 1, 3, 5, 7])}
    return specs, offsets


def test_created_files_are_sparse_npy_that_open_with_mmap(tmp_path):
    create_array_file(tmp_path / "big.npy", (100_000, 256), "float16")
    array = np.load(tmp_path / "big.npy", mmap_mode="r")
    assert isinstance(array, np.memmap) and array.shape == (100_000, 256) and not array[-1].any()
    assert (tmp_path / "big.npy").stat().st_blocks * 512 < 1_000_000  # nothing written yet
    assert array.offset == DATA_ALIGN  # rows of 4096 bytes never share a page
    assert (tmp_path / "big.npy").stat().st_size == DATA_ALIGN + 100_000 * 256 * 2
    create_array_file(tmp_path / "empty.npy", (0, 4), "float32")
    assert np.load(tmp_path / "empty.npy").shape == (0, 4)


def test_output_arrays_write_rows_in_place(tmp_path):
    specs, offsets = _files(tmp_path)
    arrays = OutputArrays(tmp_path, specs, offsets)
    arrays.write("layer-1_mean", np.array([3, 1]), np.array([[1, 2, 3], [4, 5, 6]], np.float16))
    arrays.write("layer-1_patch", np.array([2, 4]), np.arange(12, dtype=np.float32).reshape(2, 2, 3))
    arrays.close()
    mean = np.load(tmp_path / "layer-1_mean.npy")
    np.testing.assert_array_equal(mean[[3, 1]], [[1, 2, 3], [4, 5, 6]])
    assert not mean[[0, 2, 4]].any()
    patch = np.load(tmp_path / "layer-1_patch.npy")
    np.testing.assert_array_equal(patch[1:3], np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(patch[5:7], np.arange(6, 12).reshape(2, 3))
    assert not patch[[0, 3, 4]].any()


def test_background_writer_marks_rows_only_when_committed(tmp_path):
    specs, offsets = _files(tmp_path)
    RowStatus.create(tmp_path / "status.npy", 5, failed_rows=[0])
    status = RowStatus(tmp_path / "status.npy")
    log = FailureLog(tmp_path / "failures.jsonl")
    writer = BackgroundWriter(OutputArrays(tmp_path, specs, offsets), status, log, commit_interval=60)
    writer.put_batch(np.array([1, 2]), {"layer-1_mean": np.ones((2, 3), np.float16)})
    writer.put_failures([failure_record(3, "/x.jpg", "empty", "zero-byte file")])
    # Nothing is committed before the interval or close(): a crash now would redo rows 1-3.
    assert np.load(tmp_path / "status.npy").tolist() == [FAILED, PENDING, PENDING, PENDING, PENDING]
    writer.close()
    assert np.load(tmp_path / "status.npy").tolist() == [FAILED, DONE, DONE, FAILED, PENDING]
    assert FailureLog.read(tmp_path / "failures.jsonl") == [
        {"index": 3, "path": "/x.jpg", "kind": "empty", "reason": "zero-byte file"}]
    assert writer.bytes_written == 12 and writer.rows_committed == 2


def test_background_writer_commits_periodically(tmp_path):
    specs, offsets = _files(tmp_path)
    RowStatus.create(tmp_path / "status.npy", 5)
    writer = BackgroundWriter(OutputArrays(tmp_path, specs, offsets), RowStatus(tmp_path / "status.npy"),
                              FailureLog(tmp_path / "f.jsonl"), commit_interval=0.05)
    writer.put_batch(np.array([4]), {"layer-1_mean": np.full((1, 3), 7, np.float16)})
    import time

    deadline = time.monotonic() + 5
    while np.load(tmp_path / "status.npy")[4] != DONE and time.monotonic() < deadline:
        time.sleep(0.02)
    assert np.load(tmp_path / "status.npy")[4] == DONE
    assert np.load(tmp_path / "layer-1_mean.npy")[4].tolist() == [7, 7, 7]
    writer.close()


def test_writer_errors_reach_the_producer(tmp_path):
    specs, offsets = _files(tmp_path)
    RowStatus.create(tmp_path / "status.npy", 5)
    writer = BackgroundWriter(OutputArrays(tmp_path, specs, offsets), RowStatus(tmp_path / "status.npy"),
                              FailureLog(tmp_path / "f.jsonl"))
    writer.put_batch(np.array([0]), {"layer-1_mean": np.ones((1, 4), np.float16)})  # wrong width
    with pytest.raises(RuntimeError, match="writing features failed"):
        writer.close()
    assert np.load(tmp_path / "status.npy")[0] == PENDING


def test_failure_log_skips_a_torn_last_line(tmp_path):
    log = tmp_path / "f.jsonl"
    log.write_text('{"index": 1, "path": "a", "kind": "empty", "reason": "r"}\n{"index": 2, "pa')
    assert [r["index"] for r in FailureLog.read(log)] == [1]


def test_row_status_of_several_ranks_combines(tmp_path):
    RowStatus.create(tmp_path / "status-plan.npy", 4, failed_rows=[3])
    RowStatus.create(tmp_path / "status-rank0.npy", 4)
    RowStatus.create(tmp_path / "status-rank1.npy", 4)
    zero = RowStatus(tmp_path / "status-rank0.npy")
    zero.mark([0], DONE)
    assert np.load(tmp_path / "status-rank0.npy")[0] == PENDING  # marks reach the file only when flushed
    zero.flush()
    one = RowStatus(tmp_path / "status-rank1.npy")
    one.mark([2, 3], FAILED)
    one.mark([3], DONE)  # a later run decoded row 3 after all: its data was written
    one.flush()
    combined = RowStatus.combined(sorted(tmp_path.glob("status-*.npy")), 4)
    assert combined.tolist() == [DONE, PENDING, FAILED, DONE]
