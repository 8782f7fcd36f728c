"""Decoding images in DataLoader workers, in batches of images that share a patch grid.

The batch plan is global and deterministic (it depends only on the input list, the patch grids
and the batch size), so every image is always encoded beside the same neighbours: a resumed or
multi-process run computes exactly the bytes a single uninterrupted run computes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..errors import InputError
from ..preprocessing import (DEFAULT_MAX_TOKENS, native_resize_size, normalize_image, parse_resolution,
                             pixels_to_patches, resize_image)
from .inputs import DEFAULT_MAX_PIXELS, BadImageError, decode_rgb, image_size

#: Rows whose image failed before any decoding (duplicates, unreadable headers) get this grid.
NO_GRID = (0, 0)


@dataclass(frozen=True)
class Preprocess:
    """How one image file becomes (nh, nw, 3, p, p) patches (see ``preprocessing.resize_image``)."""

    patch_size: int
    resolution: int | tuple[int, int] | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    max_pixels: int | None = DEFAULT_MAX_PIXELS

    @classmethod
    def create(cls, patch_size: int, resolution=None, max_tokens: int = DEFAULT_MAX_TOKENS,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> "Preprocess":
        """Validate the options once (bad sizes raise InputError before any work starts)."""
        if max_tokens <= 0:
            raise InputError(f"--max-tokens must be positive, got {max_tokens}")
        if max_pixels is not None and max_pixels <= 0:
            raise InputError(f"--max-pixels must be positive, got {max_pixels}")
        pre = cls(patch_size, parse_resolution(resolution), max_tokens, max_pixels)
        if pre.resolution is not None:
            resize_image(Image.new("RGB", (patch_size, patch_size)), patch_size, pre.resolution, max_tokens)
        return pre

    @property
    def fixed_grid(self) -> tuple[int, int] | None:
        """The grid every image gets at a fixed resolution; None at native resolution."""
        if self.resolution is None:
            return None
        if isinstance(self.resolution, tuple):
            return self.resolution[0] // self.patch_size, self.resolution[1] // self.patch_size
        return self.resolution // self.patch_size, self.resolution // self.patch_size

    def grid_for_size(self, size: tuple[int, int], path: str = "<image>") -> tuple[int, int]:
        """(nh, nw) for an image of (width, height)."""
        fixed = self.fixed_grid
        if fixed is not None:
            return fixed
        try:
            width, height = native_resize_size(size, self.patch_size, self.max_tokens)
        except InputError as exc:
            raise BadImageError(path, "bad-size", str(exc)) from None
        return height // self.patch_size, width // self.patch_size

    def grid_of_file(self, path: str) -> tuple[int, int]:
        """(nh, nw) from the file header alone (raises BadImageError like decoding would)."""
        return self.grid_for_size(image_size(path, self.max_pixels), path)

    def rgb_image(self, path: str) -> Image.Image:
        """The decoded, resized 8-bit RGB image the patches are cut from."""
        rgb = decode_rgb(path, self.max_pixels)
        self.grid_for_size(rgb.size, path)  # elongated images fail the same way as when planning
        return resize_image(rgb, self.patch_size, self.resolution, self.max_tokens)

    def patches(self, path: str) -> torch.Tensor:
        """(nh, nw, 3, p, p) float32 patches of one file."""
        return pixels_to_patches(normalize_image(self.rgb_image(path)), self.patch_size)

    def describe(self) -> dict:
        res = self.resolution
        return {"resolution": "native" if res is None else (list(res) if isinstance(res, tuple) else res),
                "max_tokens": self.max_tokens, "patch_size": self.patch_size, "max_pixels": self.max_pixels}


class BatchDecoder(torch.utils.data.Dataset):
    """``dataset[rows]`` decodes the images of one planned batch.

    Returns ``{"rows": (B,) int64, "patches": (B, nh, nw, 3, p, p) float32 or None,
    "failures": [(row, kind, detail), ...]}``; images that cannot be used become failures.
    """

    def __init__(self, paths: Sequence[str], preprocess: Preprocess, grids: np.ndarray):
        self.paths = paths
        self.preprocess = preprocess
        self.grids = grids

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows) -> dict:
        kept, tensors, failures = [], [], []
        for row in rows:
            row = int(row)
            path = self.paths[row]
            try:
                patches = self.preprocess.patches(path)
                planned = tuple(int(v) for v in self.grids[row])
                if tuple(patches.shape[:2]) != planned:
                    raise BadImageError(path, "changed", f"decodes to a {tuple(patches.shape[:2])} patch grid but "
                                                         f"was planned as {planned} (did the file change?)")
            except BadImageError as exc:
                failures.append((row, exc.kind, exc.detail))
                continue
            kept.append(row)
            tensors.append(patches)
        return {"rows": torch.tensor(kept, dtype=torch.int64),
                "patches": torch.stack(tensors) if tensors else None,
                "failures": failures}


class HeaderScanner(torch.utils.data.Dataset):
    """``dataset[rows]`` -> [(row, (nh, nw) or None, (kind, detail) or None)] from file headers."""

    def __init__(self, paths: Sequence[str], preprocess: Preprocess):
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows) -> list:
        out = []
        for row in rows:
            try:
                out.append((int(row), self.preprocess.grid_of_file(self.paths[int(row)]), None))
            except BadImageError as exc:
                out.append((int(row), None, (exc.kind, exc.detail)))
        return out


def _loader(dataset, chunks, workers: int, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader whose every item is ``dataset[chunk]`` for one chunk of rows, in order."""
    return torch.utils.data.DataLoader(dataset, batch_size=None, sampler=chunks, num_workers=workers,
                                       collate_fn=_identity, pin_memory=pin_memory,
                                       prefetch_factor=4 if workers else None)


def _identity(item):
    return item


def scan_grids(paths: Sequence[str], preprocess: Preprocess, rows: Sequence[int], *, workers: int = 0,
               chunk: int = 256, progress: bool = False):
    """Yield (row, grid or None, failure or None) for ``rows``, reading only image headers."""
    chunks = [list(rows[i:i + chunk]) for i in range(0, len(rows), chunk)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), desc="reading image sizes", unit="img", dynamic_ncols=True)
    for results in _loader(HeaderScanner(paths, preprocess), chunks, workers):
        yield from results
        if bar is not None:
            bar.update(len(results))
    if bar is not None:
        bar.close()


def plan_batches(grids: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split the rows with a grid into batches of up to ``batch_size`` rows sharing one grid.

    Grids are taken in order of first appearance and rows in index order, so the plan depends
    only on (grids, batch_size). Rows whose grid is NO_GRID are left out.
    """
    if batch_size <= 0:
        raise InputError(f"--batch-size must be positive, got {batch_size}")
    grids = np.asarray(grids)
    usable = np.flatnonzero((grids[:, 0] > 0) & (grids[:, 1] > 0))
    if usable.size == 0:
        return []
    keys = grids[usable, 0].astype(np.int64) * (1 << 32) + grids[usable, 1].astype(np.int64)
    _, first_seen, inverse = np.unique(keys, return_index=True, return_inverse=True)
    group_rank = np.empty(len(first_seen), dtype=np.int64)
    group_rank[np.argsort(first_seen, kind="stable")] = np.arange(len(first_seen))
    row_rank = group_rank[inverse.reshape(-1)]
    ordered = usable[np.argsort(row_rank, kind="stable")]
    bounds = np.flatnonzero(np.diff(np.sort(row_rank))) + 1
    batches = []
    for members in np.split(ordered, bounds):
        batches.extend(members[i:i + batch_size] for i in range(0, len(members), batch_size))
    return batches


def batch_loader(paths: Sequence[str], preprocess: Preprocess, grids: np.ndarray, batches: Sequence[np.ndarray],
                 *, workers: int = 0, pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader yielding :class:`BatchDecoder` results for ``batches``, in order."""
    chunks = [b.tolist() for b in batches]
    return _loader(BatchDecoder(paths, preprocess, grids), chunks, workers, pin_memory)
