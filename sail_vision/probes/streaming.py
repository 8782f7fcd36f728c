"""Chunks of feature rows moved once to the compute device, read one chunk ahead.

Every pass of the probes over the features (training epochs, evaluation, statistics-free scoring,
k-NN banks) goes through :func:`stream_chunks`: rows are read from the memory maps a chunk at a time
(``--chunk-rows``) by a background thread while the previous chunk is being used, and each chunk is
moved to the device in one piece; mini-batches are then taken by indexing on the device.

- CPU: a chunk is read as float32 straight from the memory map (exactly what the probes computed
  before streaming existed, so CPU results do not depend on this module).
- CUDA: a chunk is read in its *stored* dtype (float16 for ``sail-vision extract``'s default
  ``--save-dtype``, half the bytes of float32) into pinned host memory, copied with
  ``non_blocking=True`` on a side stream while the previous chunk computes, and converted to float32
  on the GPU. Nothing is rounded on the way: features stored as float32 travel as float32.

Shuffled streams follow one seeded plan per epoch: ``rows`` cut into blocks of ``block_rows``
contiguous rows, blocks shuffled and grouped into chunks of about ``chunk_rows`` (sorted, for fast
memory-map reads), then each chunk's rows in a seeded random order for the mini-batches.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from .data import ProbeData
from .defaults import DEFAULT_BLOCK_ROWS, DEFAULT_CHUNK_ROWS


@dataclass
class Chunk:
    """Rows of one chunk on the compute device: ``features`` (name -> (n, D) float32), ``labels``
    ((n,) int64, or None) and, for shuffled streams, ``order`` (a permutation of 0..n-1)."""

    rows: np.ndarray
    features: dict[str, torch.Tensor]
    labels: torch.Tensor | None
    order: torch.Tensor | None = None

    @property
    def size(self) -> int:
        return int(self.rows.size)

    def batches(self, batch_size: int, drop_last: bool = False) -> Iterator[torch.Tensor]:
        """Index tensors (on the device) of consecutive mini-batches in the chunk's order."""
        order = self.order if self.order is not None else torch.arange(self.size, device=self._device)
        for start in range(0, self.size, batch_size):
            pick = order[start:start + batch_size]
            if drop_last and pick.numel() < batch_size:
                return
            yield pick

    @property
    def _device(self) -> torch.device:
        return next(iter(self.features.values())).device


def shuffled_chunks(rows: np.ndarray, rng: np.random.Generator, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                    block_rows: int = DEFAULT_BLOCK_ROWS) -> Iterator[np.ndarray]:
    """One epoch's order: ``rows`` cut into contiguous blocks, blocks shuffled and grouped into chunks of
    about ``chunk_rows``; each yielded chunk is sorted (for fast memmap reads) and shuffled later."""
    block_rows = max(1, min(block_rows, chunk_rows))
    blocks = [rows[i:i + block_rows] for i in range(0, rows.size, block_rows)]
    order = rng.permutation(len(blocks))
    per_chunk = max(1, chunk_rows // block_rows)
    for start in range(0, len(order), per_chunk):
        yield np.sort(np.concatenate([blocks[i] for i in order[start:start + per_chunk]]))


def epoch_plan(rows: np.ndarray, rng: np.random.Generator | None, chunk_rows: int = DEFAULT_CHUNK_ROWS,
               block_rows: int = DEFAULT_BLOCK_ROWS) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """(chunk rows, order within the chunk) of one pass: shuffled with ``rng``, in file order without."""
    if rng is None:
        for start in range(0, rows.size, chunk_rows):
            yield rows[start:start + chunk_rows], None
        return
    for chunk in shuffled_chunks(rows, rng, chunk_rows, block_rows):
        yield chunk, rng.permutation(chunk.size)


def prefetched(items: Iterable, load, enabled: bool = True) -> Iterator:
    """``load(item)`` for each item, the next one computed by a background thread while the caller
    works on the current one. ``items`` is iterated on the calling thread (seeded plans stay in order)."""
    if not enabled:
        for item in items:
            yield load(item)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="probe-prefetch") as pool:
        iterator = iter(items)
        try:
            pending = pool.submit(load, next(iterator))
        except StopIteration:
            return
        for item in iterator:
            ready = pending.result()
            pending = pool.submit(load, item)
            yield ready
        yield pending.result()


class Transport:
    """Moves host chunks to ``device``: a no-op on CPU, pinned memory and a side stream on CUDA. Host
    tensors travel in their stored dtypes; on arrival ``f:`` entries become float32 and ``m:`` entries
    (uint8 label masks) int64 (float depth maps stay float32), on the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self.stream = torch.cuda.Stream(device) if self.cuda else None

    def read(self, data: ProbeData, names: Sequence[str], rows: np.ndarray, order, labels: bool) -> dict:
        """Host side (runs on the prefetch thread): the chunk's rows out of the memory maps."""
        if not self.cuda:
            arrays = data.read(names, rows)
            host = {f"f:{n}": torch.from_numpy(a) for n, a in arrays.items()}
        else:
            host = {f"f:{n}": data.read_pinned(n, rows) for n in names}
        if labels:
            host["labels"] = torch.from_numpy(np.ascontiguousarray(data.labels[rows]))
        if order is not None:
            host["order"] = torch.from_numpy(np.ascontiguousarray(order))
        if self.cuda:
            host = {k: (v if v.is_pinned() else v.pin_memory()) for k, v in host.items()}
        return host

    def upload(self, host: dict):
        """Start moving a host chunk to the device; returns what :meth:`finish` needs."""
        if not self.cuda:
            return host, None
        with torch.cuda.stream(self.stream):
            moved = {k: v.to(self.device, non_blocking=True) for k, v in host.items()}
            event = torch.cuda.Event()
            event.record(self.stream)
        return moved, event

    def finish(self, moved: dict, event) -> dict:
        """Make an uploaded chunk safe to use on the current stream; features become float32."""
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            for tensor in moved.values():
                tensor.record_stream(current)
        return {k: (v.float() if k.startswith("f:") and v.dtype != torch.float32 else
                    v.long() if k.startswith("m:") and not v.is_floating_point() else v) for k, v in moved.items()}


def uploaded_ahead(hosts: Iterable, transport: Transport) -> Iterator:
    """``(key, device tensors)`` for each ``(key, host tensors)`` of ``hosts``; on CUDA the next item's copy
    is started (side stream) before the current one is handed out, so copies overlap compute."""
    if not transport.cuda:
        for key, host in hosts:
            yield key, transport.finish(host, None)
        return
    waiting = None
    for key, host in hosts:
        uploaded = (key, *transport.upload(host))
        if waiting is not None:
            yield waiting[0], transport.finish(*waiting[1:])
        waiting = uploaded
    if waiting is not None:
        yield waiting[0], transport.finish(*waiting[1:])


def stream_chunks(data: ProbeData, names: Sequence[str], rows: np.ndarray | None = None, *,
                  device: str | torch.device = "cpu", rng: np.random.Generator | None = None,
                  chunk_rows: int = DEFAULT_CHUNK_ROWS, block_rows: int = DEFAULT_BLOCK_ROWS,
                  labels: bool = True, prefetch: bool = True) -> Iterator[Chunk]:
    """Chunks of ``rows`` (default: all) of the stored features ``names`` on ``device``.

    With ``rng`` the pass is shuffled (see the module docstring; the same seed gives the same order
    on every device), without it rows come in order. ``labels`` also moves each chunk's labels.
    """
    device = torch.device(device)
    rows = np.arange(data.num_rows) if rows is None else np.asarray(rows)
    names = list(names)
    with_labels = labels and data.labels is not None
    transport = Transport(device)
    plan = epoch_plan(rows, rng, max(1, chunk_rows), block_rows)
    ahead = prefetch and rows.size > chunk_rows  # one chunk: nothing to read ahead
    hosts = prefetched(plan, lambda job: (job[0], transport.read(data, names, job[0], job[1], with_labels)),
                       enabled=ahead)
    for chunk_rows_, ready in uploaded_ahead(hosts, transport):  # RAM: the chunk in use and the one being read
        features = {k[2:]: v for k, v in ready.items() if k.startswith("f:")}
        yield Chunk(chunk_rows_, features, ready.get("labels"), ready.get("order"))
