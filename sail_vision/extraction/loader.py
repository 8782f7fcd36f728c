"""Decoding images in DataLoader workers, in planned batches: images that share a patch grid, or
images of any sizes packed up to a token budget (native resolution).

The batch plan is global and deterministic (it depends only on the input list, the patch grids
and the batch size or token budget), so every image is always encoded beside the same neighbours:
a resumed or multi-process run computes exactly the bytes a single uninterrupted run computes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from ..packing import plan_packs
from ..preprocessing import BadImageError, Preprocess, view_rng
from .views import split_view_path

#: Rows whose image failed before any decoding (duplicates, unreadable headers) get this grid.
NO_GRID = (0, 0)


class BatchDecoder(torch.utils.data.Dataset):
    """``dataset[rows]`` decodes the images of one planned batch.

    Returns ``{"rows": (B,) int64, "pixels": (B, H, W, 3) uint8 (a list of (H, W, 3) when the sizes
    differ) or None, "masks": a list of (H, W) uint8 label maps (with ``masks``) or None,
    "failures": [(row, kind, detail), ...]}``; images that cannot be used, or whose mask cannot,
    become failures. Workers hand over uint8 resized images (a quarter of float32 patches' bytes in
    shared and pinned memory); ``Preprocess.to_patches`` makes the patches on the encoder's device.
    ``masks``: each row's label map (``Preprocess.pixels_and_mask`` resizes it with its image),
    decoded with ``mask_rules`` (``reduce_zero_label``, ``num_classes``). ``views`` (``--views``:
    ``{"count", "seed", "first_row"}``): each row is view ``k`` of image ``i`` (global row
    ``first_row + row = i * count + k``, its path ``<path>#view=k``), drawn by
    ``Preprocess.view_pixels_and_mask`` from ``view_rng(seed, i, k)``.
    """

    def __init__(self, paths: Sequence[str], preprocess: Preprocess, grids: np.ndarray, images: Sequence = None,
                 masks: Sequence[str | None] | None = None, mask_rules: dict | None = None,
                 views: dict | None = None):
        self.paths = paths
        self.images = paths if images is None else images
        self.preprocess = preprocess
        self.grids = grids
        self.masks = masks
        self.mask_rules = dict(mask_rules or {})
        self.views = views

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows) -> dict:
        kept, tensors, masks, failures = [], [], [], []
        for row in rows:
            row = int(row)
            path = self.paths[row]
            try:
                if self.masks is None:
                    pixels, mask = self.preprocess.pixels(self.images[row], path), None
                elif not self.masks[row]:
                    raise BadImageError(path, "mask-missing", "no mask was paired with this image")
                elif self.views is not None:
                    image, view = split_view_path(path)
                    count = self.views["count"]
                    image_row, drawn = divmod(self.views["first_row"] + row, count)
                    if drawn != view:
                        raise BadImageError(path, "changed", f"row {self.views['first_row'] + row} should hold view "
                                                             f"{drawn}, not view {view}")
                    rng = view_rng(self.views["seed"], image_row, view)
                    pixels, mask = self.preprocess.view_pixels_and_mask(image, self.masks[row], rng, path,
                                                                        mask_name=self.masks[row], **self.mask_rules)
                else:
                    pixels, mask = self.preprocess.pixels_and_mask(self.images[row], self.masks[row], path,
                                                                   mask_name=self.masks[row], **self.mask_rules)
                planned = tuple(int(v) for v in self.grids[row])
                p = self.preprocess.patch_size
                grid = (pixels.shape[0] // p, pixels.shape[1] // p)
                if grid != planned:
                    raise BadImageError(path, "changed", f"decodes to a {grid} patch grid but "
                                                         f"was planned as {planned} (did the file change?)")
            except BadImageError as exc:
                target = "depth map" if exc.kind.startswith("depth-") else "mask"
                detail = exc.detail if exc.path == path else f"{target} {exc.path}: {exc.detail}"
                failures.append((row, exc.kind, detail))
                continue
            kept.append(row)
            tensors.append(pixels)
            masks.append(mask)
        same_size = len({t.shape for t in tensors}) == 1
        return {"rows": torch.tensor(kept, dtype=torch.int64),
                "pixels": (torch.stack(tensors) if same_size else tensors) if tensors else None,
                "masks": masks if self.masks is not None else None,
                "failures": failures}


class HeaderScanner(torch.utils.data.Dataset):
    """``dataset[rows]`` -> [(row, (nh, nw) or None, (kind, detail) or None)] from file headers."""

    def __init__(self, paths: Sequence[str], preprocess: Preprocess, images: Sequence = None):
        self.paths = paths
        self.images = paths if images is None else images
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, rows) -> list:
        out = []
        for row in rows:
            try:
                out.append((int(row), self.preprocess.grid_of_file(self.images[int(row)], self.paths[int(row)]), None))
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
               chunk: int = 256, progress: bool = False, images: Sequence = None):
    """Yield (row, grid or None, failure or None) for ``rows``, reading only image headers
    (``images[row]``, a path or encoded bytes; default the paths themselves)."""
    chunks = [list(rows[i:i + chunk]) for i in range(0, len(rows), chunk)]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(rows), desc="reading image sizes", unit="img", dynamic_ncols=True)
    for results in _loader(HeaderScanner(paths, preprocess, images), chunks, workers):
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


def sequence_lengths(grids: np.ndarray, extra_tokens: int) -> np.ndarray:
    """Tokens of each row's sequence (patches plus ``extra_tokens``); 0 for rows without a grid."""
    grids = np.asarray(grids, dtype=np.int64)
    counts = grids[:, 0] * grids[:, 1]
    return np.where(counts > 0, counts + extra_tokens, 0)


def default_token_budget(grids: np.ndarray, batch_size: int, extra_tokens: int) -> int:
    """``batch_size`` times the longest sequence: packed batches need no more memory than
    ``batch_size`` images of the largest size."""
    lengths = sequence_lengths(grids, extra_tokens)
    return int(batch_size * max(1, int(lengths.max(initial=0))))


def plan_packed_batches(grids: np.ndarray, max_batch_tokens: int, extra_tokens: int) -> list[np.ndarray]:
    """Split the rows with a grid into packed batches of at most ``max_batch_tokens`` tokens
    (``packing.plan_packs``: largest first, first fit); rows in each batch in index order."""
    if max_batch_tokens <= 0:
        raise InputError(f"--max-batch-tokens must be positive, got {max_batch_tokens}")
    lengths = sequence_lengths(grids, extra_tokens)
    usable = np.flatnonzero(lengths > 0)
    return [usable[pack] for pack in plan_packs(lengths[usable], max_batch_tokens)]


def batch_loader(paths: Sequence[str], preprocess: Preprocess, grids: np.ndarray, batches: Sequence[np.ndarray],
                 *, workers: int = 0, pin_memory: bool = False, images: Sequence = None,
                 masks: Sequence[str | None] | None = None, mask_rules: dict | None = None,
                 views: dict | None = None) -> torch.utils.data.DataLoader:
    """A DataLoader yielding :class:`BatchDecoder` results for ``batches``, in order."""
    chunks = [b.tolist() for b in batches]
    return _loader(BatchDecoder(paths, preprocess, grids, images, masks, mask_rules, views), chunks, workers,
                   pin_memory)
