"""Segmentation probe data: per image, patch maps of the named features and the mask, read one batch at a
time (never the whole set in memory); images of different sizes are batched by size."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import SailVisionError
from .errors import ProbeDataError
from .inputs import FeatureInput, stored_parts
from .seg_defaults import IGNORE_INDEX
from .streaming import Transport, prefetched, uploaded_ahead


class SegmentationData:
    """(features, mask) per image of a feature folder with masks (or any object with the same methods).

    ``store`` provides ``patch_maps(name, index) -> (nh, nw, D)``, ``has_masks``, ``mask(index) -> (H, W)
    uint8`` (ignore 255), ``mask_info`` (the manifest's ``masks`` entry: ``num_classes``, ``classes``,
    ``ignore_index``...), ``num_valid`` (images), ``names`` (stored features) and ``manifest`` (for the
    patch size, ``manifest["checkpoint"]["config"]["vision_patch_size"]``, and provenance).
    """

    def __init__(self, store, source: str, *, patch_size: int | None = None):
        self.store = store
        self.source = str(source)
        if not getattr(store, "has_masks", False):
            raise ProbeDataError(f"{source}: has no segmentation masks (a classification feature folder?); "
                                 f"--task segmentation needs features extracted together with their masks")
        info = dict(store.mask_info or {})
        self.mask_info = info
        self.manifest = dict(getattr(store, "manifest", None) or {})
        if patch_size is None:
            patch_size = ((self.manifest.get("checkpoint") or {}).get("config") or {}).get("vision_patch_size")
        if not patch_size:
            raise ProbeDataError(f"{source}: the manifest records no patch size (checkpoint.config."
                                 f"vision_patch_size), so masks cannot be aligned with the patch grid")
        self.patch_size = int(patch_size)
        self._set_targets(info, source)
        self.num_images = int(store.num_valid)
        if self.num_images < 1:
            raise ProbeDataError(f"{source}: no images")
        self._grids: np.ndarray | None = None

    def _set_targets(self, info: dict, source: str) -> None:
        """Check the masks' manifest entry and take the classes from it (a subclass reads other targets)."""
        if info.get("kind", "labels") != "labels":
            raise ProbeDataError(f"{source}: holds {info['kind']} maps, not segmentation masks; --task segmentation "
                                 f"needs features extracted with label maps (--masks, ADE20K)")
        num_classes = info.get("num_classes") or (len(info["classes"]) if info.get("classes") else None)
        if not num_classes:
            raise ProbeDataError(f"{source}: the masks' description records neither num_classes nor classes, "
                                 f"so the number of classes is unknown")
        self.num_classes = int(num_classes)
        self.ignore_index = int(info.get("ignore_index", IGNORE_INDEX))
        if self.ignore_index != IGNORE_INDEX:
            raise ProbeDataError(f"{source}: masks use ignore index {self.ignore_index}; the probe expects 255")
        self.classes = list(info["classes"]) if info.get("classes") else None
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise ProbeDataError(f"{source}: {len(self.classes)} class names for {self.num_classes} classes")

    def image_groups(self) -> np.ndarray:
        """(num_images,) the source image of each row: the augmented views of one image
        (``extract --views``, paths ``<path>#view=k``) share one id, so a held-out split keeps them together."""
        if not (self.manifest.get("views") or {}).get("count"):
            return np.arange(self.num_images)
        keys = [p.rsplit("#view=", 1)[0] for p in self.store.paths]
        return np.unique(keys, return_inverse=True)[1].reshape(-1)

    @classmethod
    def from_folder(cls, path: str | Path) -> "SegmentationData":
        """Open a feature folder written by ``sail-vision extract`` with masks."""
        from ..feature_store import FeatureStoreError, open_feature_dir

        try:
            store = open_feature_dir(path)
        except FeatureStoreError as exc:
            raise ProbeDataError(str(exc)) from None
        return cls(store, str(path))

    @property
    def num_rows(self) -> int:
        """Images (rows of the runner: one mask each, augmented views included)."""
        return self.num_images

    @property
    def names(self) -> list[str]:
        return list(getattr(self.store, "names", []))

    @property
    def palette(self) -> np.ndarray:
        """(C, 3) uint8 colours: the masks' palette when recorded, else a fixed seeded one."""
        palette = self.mask_info.get("palette")
        if palette is not None and len(palette) >= self.num_classes:
            return np.asarray(palette, dtype=np.uint8)[:self.num_classes]
        return np.random.default_rng(42).integers(0, 256, size=(self.num_classes, 3), dtype=np.uint8)

    def maps(self, name: str, index: int) -> np.ndarray:
        """(nh, nw, D) patch map of one stored feature, with a one-line error for non-patch features."""
        try:
            array = np.asarray(self.store.patch_maps(name, int(index)))
        except ProbeDataError:
            raise
        except (KeyError, ValueError, SailVisionError) as exc:  # the store's FeatureStoreError, or a fake's
            raise ProbeDataError(f"{self.source}: feature {name!r}: {exc}") from None
        if array.ndim != 3:
            raise ProbeDataError(f"{self.source}: feature {name!r} gives {array.shape} per image, not an "
                                 f"(nh, nw, D) patch map; segmentation probes read patch features")
        return array

    def mask(self, index: int, grid: tuple[int, int] | None = None) -> np.ndarray:
        """(H, W) uint8 mask of one image, checked against its (nh, nw) patch grid: H = nh*p, W = nw*p."""
        mask = np.asarray(self.store.mask(int(index)))
        if mask.ndim != 2:
            raise ProbeDataError(f"{self.source}: mask of image {index} has shape {mask.shape}, not (H, W)")
        self._check_target(mask, index)
        if grid is not None:
            expected = (grid[0] * self.patch_size, grid[1] * self.patch_size)
            if tuple(mask.shape) != expected:
                raise ProbeDataError(f"{self.source}: mask of image {index} is {mask.shape[0]}x{mask.shape[1]} "
                                     f"but its features are a {grid[0]}x{grid[1]} patch grid (x{self.patch_size} "
                                     f"= {expected[0]}x{expected[1]}); masks and features are misaligned")
        return mask

    def _check_target(self, mask: np.ndarray, index: int) -> None:
        bad = (mask >= self.num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            raise ProbeDataError(f"{self.source}: mask of image {index} holds label {int(mask[bad].max())}, but "
                                 f"there are {self.num_classes} classes (0 .. {self.num_classes - 1}, 255 ignored)")

    def valid_pixels(self, masks: np.ndarray) -> int:
        """Pixels of ``masks`` that count in the loss (here: not labelled 255)."""
        return int((masks != IGNORE_INDEX).sum())

    def dims(self, parts: Sequence[str]) -> list[int]:
        return [int(self.maps(p, 0).shape[-1]) for p in parts]

    def grids(self) -> np.ndarray:
        """(images, 2) (nh, nw) patch grid of every image (from the store's record, else from the masks)."""
        if self._grids is None:
            grids = None
            reader = getattr(self.store, "patch_grids", None)
            if callable(reader):
                grids = reader()
            if grids is None:  # masks are small: their shapes give the grid
                grids = [np.asarray(self.store.mask(i)).shape for i in range(self.num_images)]
                grids = np.asarray(grids, dtype=np.int64) // self.patch_size
            self._grids = np.asarray(grids, dtype=np.int64).reshape(self.num_images, 2)
        return self._grids

    def read(self, index: int, parts: Sequence[str], dtype=np.float32) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """({part: (nh, nw, D) ``dtype``}, (H, W) uint8 mask) of one image, shapes checked (``dtype`` None:
        as stored, e.g. float16, for transport to the device)."""
        maps = {p: np.asarray(self.maps(p, index), dtype=dtype) for p in parts}
        grids = {m.shape[:2] for m in maps.values()}
        if len(grids) != 1:
            raise ProbeDataError(f"{self.source}: image {index}: the features have different patch grids {grids}")
        return maps, self.mask(index, next(iter(grids)))

    def check(self, inputs: Sequence[FeatureInput]) -> None:
        """Fail early: every part is a patch feature and the first image's mask fits its grid."""
        names = self.names
        for part in stored_parts(inputs):
            if names and part not in names:
                raise ProbeDataError(f"{self.source}: no feature {part!r}; available: {', '.join(names)}")
        self.read(0, stored_parts(inputs))

    def provenance(self) -> dict:
        from .provenance import folder_provenance

        return folder_provenance(self.manifest)


def check_train_val(train: SegmentationData, val: SegmentationData | None, inputs: Sequence[FeatureInput]) -> None:
    """Refuse val data whose classes, features or patch size differ from train's."""
    train.check(inputs)
    if val is None:
        return
    val.check(inputs)
    if val.num_classes != train.num_classes:
        raise ProbeDataError(f"{val.source} has {val.num_classes} classes but {train.source} has "
                             f"{train.num_classes}; train and val masks must use the same classes")
    if train.classes and val.classes and train.classes != val.classes:
        raise ProbeDataError(f"{val.source}: class names differ from {train.source}'s "
                             f"(first difference: {next(f'{a!r} != {b!r}' for a, b in zip(train.classes, val.classes) if a != b)})")
    if val.patch_size != train.patch_size:
        raise ProbeDataError(f"{val.source}: patch size {val.patch_size}, but {train.source} has {train.patch_size}")
    parts = stored_parts(inputs)
    if train.dims(parts) != val.dims(parts):
        raise ProbeDataError(f"{val.source}: feature widths {val.dims(parts)} differ from train's {train.dims(parts)}")


def size_batches(rows: np.ndarray, grids: np.ndarray, batch_size: int,
                 rng: np.random.Generator | None) -> list[np.ndarray]:
    """Batches of up to ``batch_size`` images of one patch grid each, in a seeded shuffled order (or in
    row order without ``rng``); a size's last, smaller batch is emitted when the plan ends."""
    order = np.asarray(rows) if rng is None else rng.permutation(np.asarray(rows))
    buckets: dict[tuple[int, int], list[int]] = {}
    batches = []
    for row in order:
        key = (int(grids[row][0]), int(grids[row][1]))
        bucket = buckets.setdefault(key, [])
        bucket.append(int(row))
        if len(bucket) == batch_size:
            batches.append(np.asarray(bucket))
            buckets[key] = []
    batches.extend(np.asarray(b) for b in buckets.values() if b)
    return batches


@dataclass
class Batch:
    """One batch on the device: part -> (B*nh*nw, D) float32 features, (B, H, W) int64 masks, its grid, and
    ``valid``, its labelled (non-ignored) pixels, counted on the host before transport."""

    rows: np.ndarray
    features: dict[str, torch.Tensor]
    masks: torch.Tensor
    shape: tuple[int, int, int]
    valid: int = -1


def read_batch(data: SegmentationData, rows: np.ndarray, parts: Sequence[str], pin: bool = False) -> dict:
    """Host tensors of one batch in their stored dtypes: ``f:<part>`` (B, nh, nw, D) and ``m:masks`` (B, H, W)
    uint8, in pinned memory with ``pin`` (CUDA), plus ``valid`` (labelled pixels, an int)."""
    read = [data.read(int(r), parts, dtype=None) for r in rows]
    host = {f"f:{p}": torch.from_numpy(np.ascontiguousarray(np.stack([maps[p] for maps, _ in read]))) for p in parts}
    masks = np.stack([m for _, m in read])
    host["m:masks"] = torch.from_numpy(masks)
    if pin:
        host = {k: v.pin_memory() for k, v in host.items()}
    return {**host, "valid": data.valid_pixels(masks)}


def batches(data: SegmentationData, plan: Sequence[np.ndarray], parts: Sequence[str], device):
    """The batches of ``plan`` on ``device``, through the probes' streaming transport: read by a background
    thread one batch ahead, moved in their stored dtypes (pinned, on a side stream, the next batch's copy
    overlapping this one's compute on CUDA), converted to float32 / int64 on the device."""
    transport = Transport(torch.device(device))

    def host(rows):
        tensors = read_batch(data, rows, parts, pin=transport.cuda)
        return (rows, tensors.pop("valid")), tensors

    for (rows, valid), ready in uploaded_ahead(prefetched(plan, host, enabled=len(plan) > 1), transport):
        features = {p: ready[f"f:{p}"] for p in parts}
        nh, nw = next(iter(features.values())).shape[1:3]
        yield Batch(rows, {p: f.reshape(-1, f.shape[-1]) for p, f in features.items()}, ready["m:masks"],
                    (len(rows), int(nh), int(nw)), valid)


def patch_statistics(data: SegmentationData, parts: Sequence[str], rows: np.ndarray, device="cpu",
                     batch_size: int = 8) -> dict[str, tuple]:
    """{part: (mean, std)} float32 over every patch of ``rows``, computed on ``device`` from the transported
    batches (float64 sums there, so 10^8 patches lose no digits; one sync at the end); constant channels get
    std 1."""
    sums: dict[str, tuple] = {}
    count = 0
    for batch in batches(data, size_batches(rows, data.grids(), batch_size, None), parts, device):
        for p, x in batch.features.items():
            x = x.double()
            total, square = sums.get(p, (0.0, 0.0))
            sums[p] = (total + x.sum(0), square + x.square().sum(0))
        count += batch.shape[0] * batch.shape[1] * batch.shape[2]
    out = {}
    for p, (total, square) in sums.items():
        mean = (total / count).cpu().numpy()
        std = np.sqrt(np.maximum((square / count).cpu().numpy() - mean ** 2, 0.0))
        std[std < 1e-6 * max(float(std.max(initial=0.0)), 1e-12)] = 1.0
        out[p] = (mean.astype(np.float32), std.astype(np.float32))
    return out
