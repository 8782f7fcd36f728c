"""Writing feature rows in place into preallocated ``.npy`` files.

Completion is recorded per row in a status file (0 pending, 1 done, 2 failed) that is only
updated after the rows' data has been made durable, so after a crash every row marked done holds
its final bytes, and a resumed run redoes only the rest. Writes happen on a background thread fed
through a bounded queue. Rows are written with ``pwrite`` (not through a memory map), so a full
disk is an ``OSError`` that becomes a one-line :class:`WriteError` (a memory map would end the
process with SIGBUS), and written pages never count against the process's memory.
"""

from __future__ import annotations

import errno
import json
import os
import queue
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import SailVisionError
from ..feature_store import atomic_save_npy, read_failures

PENDING, DONE, FAILED = 0, 1, 2


@dataclass(frozen=True)
class ArraySpec:
    """One output array: its feature name, file, full shape, dtype and layout."""

    name: str
    file: str
    shape: tuple[int, ...]
    dtype: str
    layout: str  # "pooled" (N, D) | "grid" (N, nh, nw, D) | "rows" (total patches, D)
    layer: int
    pool: str
    offsets_file: str | None = None

    def manifest_entry(self) -> dict:
        return {"file": self.file, "shape": list(self.shape), "dtype": self.dtype, "layer": self.layer,
                "pool": self.pool, "layout": self.layout, "offsets": self.offsets_file}

    @property
    def nbytes_per_value(self) -> int:
        return np.dtype(self.dtype).itemsize


#: Array data starts at this file offset, so that rows whose size is a multiple of the page size
#: (e.g. 4096 float16 values) never share a page: ranks on different machines then never write
#: the same page of a shared file.
DATA_ALIGN = 4096


def create_array_file(path: Path, shape: Sequence[int], dtype) -> None:
    """Create a zero-filled ``.npy`` without writing its data (a sparse file).

    The header is padded so the data starts at :data:`DATA_ALIGN`; it is a standard version-1
    ``.npy`` header that ``np.load`` reads as usual.
    """
    dtype = np.dtype(dtype)
    shape = tuple(int(s) for s in shape)
    header = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape})
    prefix = len(np.lib.format.MAGIC_PREFIX) + 2 + 2  # magic, version (1, 0), header length
    padding = DATA_ALIGN - (prefix + len(header) + 1) % DATA_ALIGN
    text = (header + " " * padding + "\n").encode("latin1")
    with open(path, "wb") as handle:
        handle.write(np.lib.format.MAGIC_PREFIX + bytes([1, 0]) + struct.pack("<H", len(text)) + text)
        handle.truncate(handle.tell() + int(np.prod(shape)) * dtype.itemsize)


class WriteError(SailVisionError):
    """Feature rows could not be written (disk full, quota, I/O error); finished rows are kept."""


def _write_error(path: Path, exc: OSError) -> WriteError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "the disk is full" if exc.errno == errno.ENOSPC else "the disk quota is exceeded"
        return WriteError(f"{path}: {what}; rows finished so far are kept: free some space, then rerun the "
                          f"same command with --resume")
    return WriteError(f"{path}: cannot write ({exc.strerror or exc}); rows finished so far are kept: fix the "
                      f"problem, then rerun the same command with --resume")


def _npy_data_layout(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, byte offset of the data) of a C-order ``.npy`` file."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read = {(1, 0): np.lib.format.read_array_header_1_0}.get(version, np.lib.format.read_array_header_2_0)
        shape, fortran, dtype = read(handle)
        if fortran:
            raise ValueError(f"{path}: Fortran-order arrays are not written by sail-vision")
        return tuple(int(v) for v in shape), np.dtype(dtype), handle.tell()


class RowFile:
    """One ``.npy`` file opened for positional writes of whole rows (first-axis slices)."""

    def __init__(self, path: Path):
        self.path = path
        self.shape, self.dtype, self.data_offset = _npy_data_layout(path)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self.fd = os.open(path, os.O_RDWR)

    def write(self, first_row: int, values: np.ndarray) -> int:
        """Write ``values`` as rows ``first_row, first_row + 1, ...``; returns the bytes written."""
        values = np.asarray(values)
        if tuple(values.shape[1:]) != self.shape[1:] or not 0 <= first_row <= self.shape[0] - len(values):
            raise ValueError(f"{self.path}: cannot write rows {first_row}..{first_row + len(values) - 1} of shape "
                             f"{tuple(values.shape[1:])} into an array of shape {self.shape}")
        data = memoryview(np.ascontiguousarray(values, dtype=self.dtype)).cast("B")
        position = self.data_offset + int(first_row) * self.row_bytes
        done = 0
        try:
            while done < len(data):
                done += os.pwrite(self.fd, data[done:], position + done)
        except OSError as exc:
            raise _write_error(self.path, exc) from None
        return done

    def sync(self) -> None:
        """Make written rows durable, then drop them from the page cache (memory stays flat)."""
        try:
            os.fsync(self.fd)
        except OSError as exc:
            raise _write_error(self.path, exc) from None
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class OutputArrays:
    """The feature files of one extraction, opened for in-place writing."""

    def __init__(self, out_dir: Path, specs: Sequence[ArraySpec], offsets: Mapping[str, np.ndarray] | None = None):
        self.specs = {spec.name: spec for spec in specs}
        self.files = {spec.name: RowFile(out_dir / spec.file) for spec in specs}
        self.offsets = dict(offsets or {})

    def write(self, name: str, rows: np.ndarray, values: np.ndarray) -> None:
        """Store one batch: ``values[j]`` is row ``rows[j]`` ((D,), (nh, nw, D) or (n, D) patch rows; for
        patch rows ``values`` may be a list, as images of one packed batch have different grids)."""
        file = self.files[name]
        if self.specs[name].layout == "rows":
            offsets = self.offsets[name]
            for j, row in enumerate(rows):
                start, stop = int(offsets[row]), int(offsets[row + 1])
                file.write(start, values[j].reshape(stop - start, *file.shape[1:]))
            return
        rows = np.asarray(rows)
        if rows.size and np.all(np.diff(rows) == 1):
            file.write(int(rows[0]), values)
        else:
            for j, row in enumerate(rows):
                file.write(int(row), values[j:j + 1])

    def flush(self) -> None:
        for file in self.files.values():
            file.sync()

    def close(self) -> None:
        try:
            self.flush()
        finally:
            for file in self.files.values():
                file.close()
            self.files.clear()


class RowStatus:
    """A per-row status file (uint8: 0 pending, 1 done, 2 failed) written by one process.

    Each rank keeps its own file, so no two machines ever write the same page; :meth:`combined`
    merges the files of a run. Marks are kept in memory and written out by :meth:`flush`.
    """

    def __init__(self, path: Path):
        self.path = path
        self.array = np.load(path).astype(np.uint8)
        self._file = RowFile(path)
        self._dirty = False

    @staticmethod
    def create(path: Path, num_rows: int, failed_rows: Sequence[int] = ()) -> None:
        status = np.zeros(num_rows, dtype=np.uint8)
        status[list(failed_rows)] = FAILED
        atomic_save_npy(path, status)

    @staticmethod
    def combined(paths: Sequence[Path], num_rows: int) -> np.ndarray:
        """The status of every row over the given files: done if any file says done (its data was
        written), else failed if any says failed, else pending."""
        status = np.zeros(num_rows, dtype=np.uint8)
        done = np.zeros(num_rows, dtype=bool)
        for path in paths:
            marks = np.load(path)
            np.maximum(status, marks, out=status)
            done |= marks == DONE
        status[done] = DONE
        return status

    def mark(self, rows: Sequence[int], value: int) -> None:
        if len(rows):
            self.array[np.asarray(rows, dtype=np.int64)] = value
            self._dirty = True

    def flush(self) -> None:
        if self._dirty and self.array.size:
            self._file.write(0, self.array)
            self._file.sync()
            self._dirty = False

    def close(self) -> None:
        self._file.close()


class FailureLog:
    """An append-only JSON-lines file of failed rows, made durable before the rows are marked."""

    def __init__(self, path: Path):
        self.path = path

    def append(self, records: Sequence[dict]) -> None:
        if not records:
            return
        with open(self.path, "a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    @staticmethod
    def read(path: Path) -> list[dict]:
        """Records of a log, skipping lines torn by a crash (``feature_store.read_failures``)."""
        return read_failures(path)


def failure_record(row: int, path: str, kind: str, reason: str) -> dict:
    return {"index": int(row), "path": path, "kind": kind, "reason": reason}


class BackgroundWriter:
    """Writes batches and failures from a background thread and commits them periodically.

    A commit flushes the feature files, appends pending failure records durably, and only then
    marks the rows done / failed in the status file. The queue is bounded so that the encoder
    waits rather than memory growing when the disk is slow.
    """

    def __init__(self, arrays: OutputArrays, status: RowStatus, failure_log: FailureLog, *,
                 commit_interval: float = 2.0, max_pending: int = 4):
        self.arrays = arrays
        self.status = status
        self.failure_log = failure_log
        self.commit_interval = commit_interval
        self.bytes_written = 0
        self.rows_committed = 0
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._done_rows: list[np.ndarray] = []
        self._failures: list[dict] = []
        self._last_commit = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="sail-vision-writer", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ producer side
    def put_batch(self, rows: np.ndarray, features: Mapping[str, np.ndarray]) -> None:
        self._put(("batch", np.asarray(rows, dtype=np.int64), dict(features)))

    def put_failures(self, records: Sequence[dict]) -> None:
        if records:
            self._put(("failures", list(records), None))

    def _put(self, item) -> None:
        while True:
            self.raise_if_failed()
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def raise_if_failed(self) -> None:
        if isinstance(self._error, SailVisionError):
            raise type(self._error)(str(self._error))
        if self._error is not None:
            raise RuntimeError(f"writing features failed: {self._error}") from self._error

    def close(self) -> None:
        """Write everything queued, commit, and stop the thread (re-raising its error, if any)."""
        if self._thread.is_alive():
            self._queue.put(("stop", None, None))
            self._thread.join()
        self.raise_if_failed()

    # ------------------------------------------------------------------ writer thread
    def _run(self) -> None:
        try:
            while True:
                try:
                    kind, payload, features = self._queue.get(timeout=self.commit_interval)
                except queue.Empty:
                    self._commit()
                    continue
                if kind == "stop":
                    self._commit()
                    return
                if kind == "batch":
                    for name, values in features.items():
                        self.arrays.write(name, payload, values)
                        self.bytes_written += (sum(v.nbytes for v in values) if isinstance(values, list)
                                               else values.nbytes)
                    self._done_rows.append(payload)
                else:
                    self._failures.extend(payload)
                if time.monotonic() - self._last_commit >= self.commit_interval:
                    self._commit()
        except BaseException as exc:  # noqa: BLE001 - handed to the producer thread
            self._error = exc

    def _commit(self) -> None:
        if self._done_rows or self._failures:
            self.arrays.flush()
            self.failure_log.append(self._failures)
            if self._done_rows:
                rows = np.concatenate(self._done_rows)
                self.status.mark(rows, DONE)
                self.rows_committed += rows.size
            self.status.mark([r["index"] for r in self._failures], FAILED)
            self.status.flush()
            self._done_rows, self._failures = [], []
        self._last_commit = time.monotonic()
