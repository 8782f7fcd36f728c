"""``--views K``: K augmented training views of every image (mmseg's ADE20K pipeline,
``preprocessing.augment_pair``), extracted once so that probes train with augmentation from the cache.

Layout: the listing of N images becomes N x K rows, image i's views at rows i*K .. i*K+K-1 (view k at
row i*K+k); ``paths.txt`` names each ``<path>#view=k``, ``mask_paths.txt`` repeats the mask. A view's
random draws come from ``preprocessing.view_rng(seed, i, k)``: a function of the global row alone, so
any part size, resume, rank or task computes the same bytes.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..sources import ImageSource

#: What separates an image's path from its view index in ``paths.txt``.
VIEW_MARK = "#view="


def view_path(path: str, view: int) -> str:
    return f"{path}{VIEW_MARK}{view}"


def split_view_path(path: str) -> tuple[str, int]:
    """``<path>#view=k`` -> (path, k)."""
    base, mark, index = path.rpartition(VIEW_MARK)
    if not mark or not index.isdigit():
        raise InputError(f"{path!r} does not name a view (<path>{VIEW_MARK}k)")
    return base, int(index)


def expand_views(source, count: int):
    """A flat segmentation source with each row repeated as ``count`` view rows (see the module)."""
    if getattr(source, "shards", None) is not None:
        raise InputError("--views works on image folders with masks (the pairs or ade20k layout), not on shards")
    if getattr(source, "masks", None) is None:
        raise InputError("--views needs masks or depth maps: pass --masks DIR or --depths DIR (the pairs layout), "
                         "an ADE20K tree or --layout nyu")
    rows = len(source.paths)
    paths = [view_path(p, k) for p in source.paths for k in range(count)]
    masks = [m for m in source.masks for _ in range(count)]
    labels = None if source.labels is None else np.repeat(source.labels, count)
    errors = {row * count + k: error for row, error in source.errors.items() for k in range(count)}
    description = {**source.description, "views": {"count": count, "images": rows}}
    if source.description.get("labels"):  # counted in rows, as the manifest counts them: K per image
        labels_info = source.description["labels"]
        description["labels"] = {**labels_info, **{k: labels_info[k] * count for k in ("labelled", "rows")
                                                   if labels_info.get(k) is not None}}
    return ImageSource(paths, labels, source.classes, source.layout, source.root, description, errors, masks)


class ViewSource:
    """``resolve_inputs(**source_args)`` expanded to views (picklable, like the runner's loader)."""

    def __init__(self, resolve, count: int):
        self.resolve = resolve
        self.count = count

    def __call__(self):
        return expand_views(self.resolve(), self.count)
