"""The images of one input shard, copied once into the part's work folder for random access.

A WebDataset tar (or a ``pipe:`` command) can only be read front to back, and a Parquet file in
row batches; the extraction plans batches by patch grid and resumes by row. So a shard's part
first copies every record's encoded image into ``.extract/images.bin`` (``images.npy`` holds each
row's byte offset and length; -1 marks a record whose image is a file path, kept in
``image-paths.json``), then decodes rows from there. The copy lives in the part's working folder
and goes when the part is finished.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ..feature_store import atomic_save_npy, atomic_write_text
from ..sources.base import Record

DATA_FILE = "images.bin"
INDEX_FILE = "images.npy"
PATHS_FILE = "image-paths.json"


def spool_records(records: Iterable[Record], folder: Path) -> list[Record]:
    """Copy the images of ``records`` into ``folder`` (created); return the records without their
    bytes (key, label, path, error), in order. Written through temporary names: an interrupted copy
    is simply redone."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{DATA_FILE}.tmp"
    index, paths, kept = [], {}, []
    with open(tmp, "wb") as handle:
        for row, record in enumerate(records):
            if record.data is not None:
                index.append((handle.tell(), len(record.data)))
                handle.write(record.data)
            else:
                index.append((0, -1))
                if record.path is not None:
                    paths[str(row)] = record.path
            kept.append(Record(key=record.key, label=record.label, path=record.path, error=record.error))
        handle.flush()
        os.fsync(handle.fileno())
    atomic_write_text(folder / PATHS_FILE, json.dumps(paths))
    atomic_save_npy(folder / INDEX_FILE, np.asarray(index, dtype=np.int64).reshape(-1, 2))
    os.replace(tmp, folder / DATA_FILE)
    return kept


def has_spool(folder: Path) -> bool:
    return (folder / DATA_FILE).is_file() and (folder / INDEX_FILE).is_file()


class SpooledImages(Sequence):
    """``images[row]``: the encoded bytes (or the file path) of one spooled row. Picklable for
    DataLoader workers: each process opens the data file itself."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.index = np.load(self.folder / INDEX_FILE)
        self.paths = {int(k): v for k, v in json.loads((self.folder / PATHS_FILE).read_text()).items()}
        self._fd = None
        self._pid = None

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, row):
        offset, length = (int(v) for v in self.index[row])
        if length < 0:
            return self.paths.get(int(row), "")
        if self._fd is None or self._pid != os.getpid():
            self._fd, self._pid = os.open(self.folder / DATA_FILE, os.O_RDONLY), os.getpid()
        return os.pread(self._fd, length, offset)

    def __getstate__(self):
        return {"folder": self.folder, "index": self.index, "paths": self.paths, "_fd": None, "_pid": None}
