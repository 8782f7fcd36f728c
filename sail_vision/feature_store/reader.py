"""The one reader of feature folders: :func:`open_feature_dir` -> :class:`FeatureDir`, lazy
:class:`PartedArray` views over an unjoined extraction's parts, and the readers of the text files
(:func:`read_lines` for ``paths.txt`` / ``mask_paths.txt``, :func:`read_failures` for failure logs)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .format import (FAILURES_FILE, PATCH_GRIDS_FILE, FeatureStoreError, check_manifest, feature_name, parted_files,
                     read_manifest)


def read_lines(file: str | Path, count: int | None = None) -> list[str]:
    """The lines of a one-entry-per-row text file (``paths.txt``, ``mask_paths.txt``): split on ``\n``
    only (a name may hold any other character), a torn last line without its ``\n`` left out."""
    with open(file, encoding="utf-8", newline="") as handle:  # newline="": a "\r" stays in its name
        lines = handle.read().split("\n")[:-1]
    return lines if count is None else lines[:count]


def read_failures(file: str | Path) -> list[dict]:
    """The records of a failure file or log (one JSON object with an integer ``"index"`` per line).
    Lines a crash left torn (at the end, or in the middle of a log appended to again) are skipped."""
    path = Path(file)
    if not path.is_file():
        return []
    records = []
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        text = handle.read()
    for line in text.split("\n"):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("index"), int) and not isinstance(record["index"], bool):
            records.append(record)
    return records


class PartedArray:
    """The first-axis concatenation of several ``.npy`` files (the parts of an extraction), read
    lazily: each file is memory-mapped, and indexing (an integer, a slice, an index or boolean
    array, optionally followed by indices of the other axes) copies only the rows asked for.
    ``np.asarray`` on the whole array reads everything."""

    def __init__(self, files: Sequence[Path]):
        self.files = [Path(f) for f in files]
        self._arrays = [np.load(f, mmap_mode="r") for f in self.files]
        first = self._arrays[0]
        if any(a.shape[1:] != first.shape[1:] or a.dtype != first.dtype for a in self._arrays):
            raise FeatureStoreError(f"{self.files[0].parent.parent}: the parts' {self.files[0].name} differ in "
                                    f"shape or dtype; re-extract this folder")
        self.starts = np.concatenate([[0], np.cumsum([len(a) for a in self._arrays])]).astype(np.int64)
        self.shape = (int(self.starts[-1]), *first.shape[1:])
        self.dtype = first.dtype

    ndim = property(lambda self: len(self.shape))
    size = property(lambda self: int(np.prod(self.shape, dtype=np.int64)))

    def __len__(self) -> int:
        return self.shape[0]

    def _rows(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((len(index), *self.shape[1:]), dtype=self.dtype)
        if len(index) == 0:
            return out
        if index.min() < 0 or index.max() >= self.shape[0]:
            raise IndexError(f"row index out of range for {self.shape[0]} rows")
        part = np.searchsorted(self.starts, index, side="right") - 1
        for p in np.unique(part):
            where = np.flatnonzero(part == p)
            local = index[where] - self.starts[p]
            if local.size and np.all(np.diff(local) == 1):
                out[where] = self._arrays[p][int(local[0]):int(local[-1]) + 1]
            else:
                out[where] = self._arrays[p][local]
        return out

    def __getitem__(self, key):
        rest = ()
        if isinstance(key, tuple):
            key, rest = key[0], key[1:]
        if isinstance(key, (int, np.integer)):
            row = int(key) + (self.shape[0] if key < 0 else 0)
            return self._rows(np.array([row]))[0][rest]
        if isinstance(key, slice):
            result = self._rows(np.arange(*key.indices(self.shape[0]), dtype=np.int64))
        else:
            key = np.asarray(key)
            if key.dtype == bool:
                if key.shape != (self.shape[0],):
                    raise IndexError(f"boolean index of shape {key.shape} for {self.shape[0]} rows")
                key = np.flatnonzero(key)
            result = self._rows(np.where(key < 0, key + self.shape[0], key).astype(np.int64))
        return result[(slice(None), *rest)] if rest else result

    def __array__(self, dtype=None, copy=None):
        whole = self[:]
        return whole if dtype is None else whole.astype(dtype)

    def __repr__(self) -> str:
        return f"PartedArray(shape={self.shape}, dtype={self.dtype}, parts={len(self.files)})"


class FeatureDir:
    """A finished feature folder; open it with :func:`open_feature_dir`.

    ``feature(name)`` memory-maps ``{name}.npy`` and, by default, returns only the rows of
    images that were processed successfully (``valid``); ``labels`` and ``paths`` follow the
    same rows. Pass ``valid_only=False`` for the raw file (failed rows are zeros there). In a
    folder whose parts are not joined (``extract --no-consolidate``) feature arrays are
    :class:`PartedArray` views over the parts' files, indexed like memory-mapped arrays.
    """

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self._valid: np.ndarray | None = None

    # ------------------------------------------------------------------ description
    @property
    def names(self) -> list[str]:
        """Feature names (file stems), in the manifest's order."""
        return list(self.manifest["features"])

    @property
    def num_items(self) -> int:
        """Rows in the files, failed images included."""
        return int(self.manifest["num_items"])

    @property
    def layers(self) -> list[int]:
        return list(self.manifest.get("layers") or [])

    @property
    def pools(self) -> list[str]:
        return list(self.manifest.get("pools") or [])

    @property
    def classes(self) -> list[str] | None:
        return self.manifest.get("classes")

    def info(self, name: str) -> dict:
        """The manifest entry of one feature (file, shape, dtype, layer, pool, layout...)."""
        features = self.manifest["features"]
        key = name[:-4] if name.endswith(".npy") else name
        if key not in features:
            raise FeatureStoreError(f"{self.path}: no feature {name!r}; available: {', '.join(features) or 'none'}")
        return features[key]

    def name_for(self, layer: int, pool: str) -> str:
        """The feature name of (layer, pool); negative layers count from the end of the model."""
        if layer < 0:
            total = self.manifest.get("num_layers")
            if total is None:
                raise FeatureStoreError(f"{self.path}: the manifest has no num_layers, so layer {layer} "
                                        f"cannot be resolved; use a non-negative index from {self.layers}")
            layer = layer % (int(total) + 1)
        name = feature_name(layer, pool)
        self.info(name)
        return name

    # ------------------------------------------------------------------ rows
    @property
    def consolidated(self) -> bool:
        """False while the feature arrays still live in the extraction's parts."""
        return parted_files(self.path, self.manifest, "") is None

    def _array(self, file: str):
        parted = parted_files(self.path, self.manifest, file)
        return np.load(self.path / file, mmap_mode="r") if parted is None else PartedArray(parted)

    @property
    def valid(self) -> np.ndarray:
        """(N,) bool: which rows hold features of a successfully processed image."""
        if self._valid is None:
            self._valid = np.load(self.path / self.manifest["valid"], mmap_mode="r").astype(bool)
        return self._valid

    @property
    def num_valid(self) -> int:
        return int(self.valid.sum())

    @property
    def all_valid(self) -> bool:
        return bool(self.valid.all())

    def _select(self, array: np.ndarray, valid_only: bool) -> np.ndarray:
        return array if (not valid_only or self.all_valid) else array[self.valid]

    def feature(self, name: str, *, valid_only: bool = True) -> np.ndarray:
        """The array of a feature, memory-mapped read-only.

        Pooled: (rows, D); grid patch features: (rows, nh, nw, D); native-resolution patch
        features: concatenated patch rows (sum of patches, D) in image order, see
        :meth:`patch_offsets`. With ``valid_only`` (default) failed images' rows are dropped
        (the result is then an in-memory copy unless every row is valid).
        """
        info = self.info(name)
        array = self._array(info["file"])
        if info.get("layout") == "rows":
            if not valid_only or self.all_valid:
                return array
            offsets = np.load(self.path / info["offsets"], mmap_mode="r")
            pieces = [array[offsets[i]:offsets[i + 1]] for i in np.flatnonzero(self.valid)]
            return np.concatenate(pieces) if pieces else array[:0].copy()
        return self._select(array, valid_only)

    def patch_offsets(self, name: str, *, valid_only: bool = True) -> np.ndarray:
        """(rows+1,) int64 offsets into a native-resolution patch feature: image i's patches are
        rows ``offsets[i]:offsets[i+1]`` of :meth:`feature` (with the same ``valid_only``)."""
        info = self.info(name)
        if info.get("layout") != "rows":
            raise FeatureStoreError(f"{self.path}: feature {name!r} has layout {info.get('layout')!r}; "
                                    f"only native-resolution patch features have offsets")
        offsets = np.asarray(np.load(self.path / info["offsets"], mmap_mode="r"), dtype=np.int64)
        if not valid_only or self.all_valid:
            return offsets
        counts = np.diff(offsets)[self.valid]
        return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def patch_grids(self, *, valid_only: bool = True) -> np.ndarray | None:
        """(rows, 2) int (nh, nw) patch grid of each image, when the extraction recorded it."""
        file = self.manifest.get("patch_grids")
        if not file:
            return None
        return self._select(np.load(self.path / file, mmap_mode="r"), valid_only)

    def patch_maps(self, name: str, index: int, *, valid_only: bool = True) -> np.ndarray:
        """Patch features of one image as an (nh, nw, D) array, for any patch layout."""
        info = self.info(name)
        if info.get("pool") != "patch" and info.get("layout") == "pooled":
            raise FeatureStoreError(f"{self.path}: feature {name!r} is pooled, not patch features")
        if info.get("layout") == "grid":
            return np.asarray(self.feature(name, valid_only=valid_only)[index])
        grids = self.patch_grids(valid_only=valid_only)
        if grids is None:
            raise FeatureStoreError(f"{self.path}: no {PATCH_GRIDS_FILE}; cannot shape native patch rows")
        rows = self._array(info["file"])
        raw_index = int(np.flatnonzero(self.valid)[index]) if (valid_only and not self.all_valid) else index
        offsets = np.load(self.path / info["offsets"], mmap_mode="r")
        nh, nw = (int(v) for v in grids[index])
        return np.asarray(rows[offsets[raw_index]:offsets[raw_index + 1]]).reshape(nh, nw, -1)

    # ------------------------------------------------------------------ masks
    @property
    def has_masks(self) -> bool:
        """True when the folder stores a label map per image (a segmentation source)."""
        return bool(self.manifest.get("masks"))

    @property
    def target_kind(self) -> str | None:
        """What :meth:`mask` returns: ``"labels"`` (uint8 label maps), ``"depth"`` (float32 metres, 0 = no
        measurement), or None when the folder stores no dense target."""
        info = self.mask_info
        return None if info is None else info.get("kind", "labels")

    @property
    def mask_info(self) -> dict | None:
        """The manifest's ``"masks"`` entry (file, layout, offsets, ignore_index, reduce_zero_label, ...)."""
        return self.manifest.get("masks") or None

    def _raw_row(self, index: int, valid_only: bool) -> int:
        count = self.num_valid if valid_only else self.num_items
        if not -count <= index < count:
            raise IndexError(f"{self.path}: image {index} out of range for {count} rows")
        index = int(index) % count
        return int(np.flatnonzero(self.valid)[index]) if (valid_only and not self.all_valid) else index

    def mask(self, index: int, *, valid_only: bool = True) -> np.ndarray:
        """The (H, W) uint8 label map of image ``index`` (numbered as :meth:`patch_maps`), on the same
        pixels as its patch features: H, W = its patch grid times the patch size (ignore index 255);
        float32 depths in metres (0 = no measurement) when :attr:`target_kind` is ``"depth"``."""
        info = self.mask_info
        if info is None:
            raise FeatureStoreError(f"{self.path}: no masks (the extraction's source had no label maps)")
        row = self._raw_row(index, valid_only)
        array = self._array(info["file"])
        if info["layout"] == "grid":
            return np.asarray(array[row])
        offsets = np.load(self.path / info["offsets"], mmap_mode="r")
        start, stop = int(offsets[row]), int(offsets[row + 1])
        height, width = self._mask_shape(row, stop - start)
        return np.asarray(array[start:stop]).reshape(height, width)

    def _mask_shape(self, row: int, pixels: int) -> tuple[int, int]:
        grids = self.patch_grids(valid_only=False)
        if grids is None:
            raise FeatureStoreError(f"{self.path}: no {PATCH_GRIDS_FILE}; cannot shape native-resolution masks")
        nh, nw = (int(v) for v in grids[row])
        if nh * nw == 0 or pixels == 0:
            return 0, 0
        p = int(round((pixels / (nh * nw)) ** 0.5))
        if nh * p * nw * p != pixels:
            raise FeatureStoreError(f"{self.path}: mask of row {row} holds {pixels} pixels, not a {nh}x{nw} patch "
                                    f"grid of square patches; re-extract this folder")
        return nh * p, nw * p

    @property
    def labels(self) -> np.ndarray | None:
        """(rows,) int64 labels of the valid rows, or None when the inputs had none."""
        return self.labels_of(valid_only=True)

    def labels_of(self, *, valid_only: bool = True) -> np.ndarray | None:
        file = self.manifest.get("labels")
        if not file:
            return None
        return self._select(np.load(self.path / file, mmap_mode="r"), valid_only)

    @property
    def paths(self) -> list[str]:
        """Image paths of the valid rows."""
        return self.paths_of(valid_only=True)

    def paths_of(self, *, valid_only: bool = True) -> list[str]:
        file = self.manifest.get("paths")
        if not file:
            return []
        lines = read_lines(self.path / file, self.num_items)
        if not valid_only or self.all_valid:
            return lines
        return [p for p, ok in zip(lines, self.valid) if ok]

    @property
    def failures(self) -> list[dict]:
        """The failure records (index, path, reason) of this extraction."""
        return read_failures(self.path / FAILURES_FILE)

    def __repr__(self) -> str:
        return (f"FeatureDir({str(self.path)!r}, items={self.num_items}, valid={self.num_valid}, "
                f"features={self.names})")


def open_feature_dir(path: str | Path) -> FeatureDir:
    """Open a finished feature folder, checking its manifest against the files.

    Raises :class:`FeatureStoreError` when the folder or manifest is missing or malformed, or
    when the extraction that writes it has not finished.
    """
    folder = Path(path)
    manifest = read_manifest(folder)
    if manifest.get("complete") is not True:
        raise FeatureStoreError(
            f"{folder}: the extraction is unfinished (manifest \"complete\": false); rerun the same "
            f"`sail-vision extract ... --out {folder} --resume` command to finish it")
    check_manifest(folder, manifest)
    return FeatureDir(folder, manifest)
