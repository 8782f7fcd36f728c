"""The on-disk format of extracted features, and the one reader every consumer uses.

A feature folder (written by ``sail-vision extract`` or :func:`write_feature_dir`) holds:

- ``layer-{k}_{pool}.npy`` per (layer, pool): pooled features (N, D); patch features
  (N, nh, nw, D) at a fixed resolution, or concatenated rows (total patches, D) plus
  ``layer-{k}_patch_offsets.npy`` (N+1,) int64 at native resolution;
- ``valid.npy`` (N,) bool: True for rows whose image was processed; failed rows are zeros on
  disk and are never handed out as features by :class:`FeatureDir`;
- ``labels.npy`` (N,) int64 when labels are known; ``paths.txt`` (one path per line);
- ``failures.jsonl`` (one ``{"index", "path", "reason"}`` object per failed image);
- with a segmentation source, ``masks.npy``: each image's uint8 label map (ignore index 255) on
  its preprocessed pixels (patch grid times patch size, so patch maps and masks align): (N, H, W)
  at a fixed resolution, or concatenated flattened rows (sum of H_i*W_i,) plus
  ``mask_offsets.npy`` (N+1,) int64 at native resolution; ``mask_paths.txt`` names each row's
  mask file; the manifest's ``"masks"`` entry describes them (:func:`mask_manifest_entry`);
- ``manifest.json`` describing all of it; ``"complete": false`` while an extraction runs.

Every array opens with ``np.load(path, mmap_mode="r")``. While an extraction runs, its parts live
in ``parts/`` (each a feature folder of this format; see ``extraction.parts``), its working
files in ``.extract/`` and a lock file (``folder_lock.LOCK_FILE``) names the writer; both are
gone once it finishes. :func:`extraction_entries` says which entries of a folder are the
extractor's own: ``--overwrite`` removes only those, and refuses when anything else is there.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping, Sequence

import numpy as np

from .errors import SailVisionError
from .folder_lock import LOCK_FILE
from .pause_points import pause_point

FORMAT_NAME = "sail-vision-features"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
VALID_FILE = "valid.npy"
LABELS_FILE = "labels.npy"
PATHS_FILE = "paths.txt"
FAILURES_FILE = "failures.jsonl"
PATCH_GRIDS_FILE = "patch_grids.npy"
MASKS_FILE = "masks.npy"
MASK_OFFSETS_FILE = "mask_offsets.npy"
MASK_PATHS_FILE = "mask_paths.txt"
#: The label of pixels that count for nothing in stored masks (mmseg's ``ignore_index``).
MASK_IGNORE_INDEX = 255
#: Working files of an unfinished extraction (plan, per-rank row status, failure logs).
STATE_DIR = ".extract"
#: The parts of an extraction that is not consolidated yet (see ``extraction.parts``).
PARTS_DIR = "parts"
#: Every fixed name an extraction writes in its folder.
OWN_FILES = (MANIFEST_FILE, VALID_FILE, LABELS_FILE, PATHS_FILE, FAILURES_FILE, PATCH_GRIDS_FILE, MASKS_FILE,
             MASK_OFFSETS_FILE, MASK_PATHS_FILE, STATE_DIR, PARTS_DIR)

#: Layouts of a feature array: one vector per image, a patch grid per image (fixed resolution),
#: or patch rows of all images concatenated (native resolution; see the offsets file).
LAYOUTS = ("pooled", "grid", "rows")

_NAME_RE = re.compile(r"^layer-(\d+)_([a-z]+)$")
_FEATURE_FILE_RE = re.compile(r"^layer-\d+_(?:[a-z]+|patch_offsets)\.npy$")
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")  # _atomic_write's temporary names


class FeatureStoreError(SailVisionError):
    """A feature folder is missing, unfinished, malformed, or lacks a requested feature."""


def mask_manifest_entry(native: bool, *, reduce_zero_label: bool = False, num_classes: int | None = None,
                        classes: Sequence[str] | None = None) -> dict:
    """The manifest's ``"masks"`` entry: label maps at native resolution (``"rows"`` + offsets) or at
    a fixed one (``"grid"``), and the rules that made the labels."""
    return {"file": MASKS_FILE, "layout": "rows" if native else "grid",
            "offsets": MASK_OFFSETS_FILE if native else None, "dtype": "uint8", "ignore_index": MASK_IGNORE_INDEX,
            "reduce_zero_label": bool(reduce_zero_label), "num_classes": None if num_classes is None else int(num_classes),
            "classes": None if classes is None else list(classes), "resize": "nearest"}


def feature_name(layer: int, pool: str) -> str:
    """The name (and file stem) of a (layer, pool) feature: ``layer-{k}_{pool}``."""
    if int(layer) < 0:
        raise FeatureStoreError(f"feature names use non-negative layer indices, got {layer}")
    return f"layer-{int(layer)}_{pool}"


def offsets_file_name(layer: int) -> str:
    """File of the (N+1,) row offsets of a native-resolution patch feature."""
    return f"layer-{int(layer)}_patch_offsets.npy"


def parse_feature_name(name: str) -> tuple[int | None, str | None]:
    """``'layer-4_mean'`` -> (4, 'mean'); any other name -> (None, None)."""
    match = _NAME_RE.match(name)
    return (int(match.group(1)), match.group(2)) if match else (None, None)


def _atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Write a file through a temporary file, fsync and an atomic rename, so that readers (and
    a crash at any moment) see either the old or the new content, never a mix."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, _default_file_mode())
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        pause_point(f"atomic-write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    _atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    """Atomically write an array as ``.npy``."""
    _atomic_write(path, lambda handle: np.save(handle, np.ascontiguousarray(array), allow_pickle=False))


def write_manifest(out_dir: str | Path, manifest: Mapping[str, Any]) -> None:
    """Atomically (re)write ``manifest.json``."""
    atomic_write_text(Path(out_dir) / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def _default_file_mode() -> int:
    """0o666 minus the process umask: the mode ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a .npy file without reading its data."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _is_own_name(name: str, manifest_files: set[str]) -> bool:
    if name in OWN_FILES or name in manifest_files or _FEATURE_FILE_RE.match(name):
        return True
    match = _TMP_RE.match(name)
    return bool(match) and _is_own_name(match.group("name"), manifest_files)


def _manifest_files(manifest: Mapping | None) -> set[str]:
    files: set[str] = set()
    for info in ((manifest or {}).get("features") or {}).values():
        if isinstance(info, dict):
            files.update(v for k, v in info.items() if k in ("file", "offsets") and isinstance(v, str))
    return files


def extraction_entries(folder: str | Path, manifest: Mapping | None = None) -> tuple[list[Path], list[Path]]:
    """(the extractor's own entries, everything else) in ``folder``, the lock file left out.

    Own entries are the fixed names above, the files ``manifest`` lists, any ``layer-{k}_{pool}.npy``
    / ``layer-{k}_patch_offsets.npy``, and temporary files of those names left by a crash.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [], []
    known = _manifest_files(manifest)
    own, other = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name == LOCK_FILE:
            continue
        (own if _is_own_name(entry.name, known) else other).append(entry)
    return own, other


def _listing(entries: Sequence[Path], limit: int = 8) -> str:
    names = [e.name + ("/" if e.is_dir() and not e.is_symlink() else "") for e in entries]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def remove_extraction_files(folder: str | Path, manifest: Mapping | None = None, *,
                            keep_others: bool = False, option: str = "--out") -> None:
    """Remove what an extraction wrote in ``folder`` (see :func:`extraction_entries`), manifest first,
    so that an interruption leaves a folder that is recognisably an unfinished extraction. Unless
    ``keep_others``, refuses, listing them, when other files are present (``--overwrite``). Nothing it
    did not write is ever deleted."""
    folder = Path(folder)
    own, other = extraction_entries(folder, manifest)
    if other and not keep_others:
        raise FeatureStoreError(f"{option} {folder}: holds files sail-vision did not write ({_listing(other)}); "
                                f"move them away or choose another {option}; nothing was deleted")
    own.sort(key=lambda e: e.name != MANIFEST_FILE)
    for index, entry in enumerate(own):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
        if index == 0:
            _fsync_dir(folder)
            pause_point("extract:overwrite")
    _fsync_dir(folder)


def remove_temporary_files(folder: str | Path) -> None:
    """Remove the working folder and temporary files a finished extraction no longer needs."""
    folder = Path(folder)
    shutil.rmtree(folder / STATE_DIR, ignore_errors=True)
    for entry in folder.iterdir():
        if _TMP_RE.match(entry.name) and _is_own_name(entry.name, set()) and entry.is_file():
            entry.unlink(missing_ok=True)


def describe_bytes(n: float) -> str:
    """1234567 -> '1.2 MB'."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def check_free_space(folder: str | Path, needed: int, *, option: str = "--out") -> None:
    """Refuse to start when the disk of ``folder`` has less than ``needed`` bytes free."""
    folder = Path(folder)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise FeatureStoreError(f"{option} {folder}: the features need {describe_bytes(needed)} more but only "
                                f"{describe_bytes(free)} is free on that disk; free some space (then --resume), "
                                f"choose another {option}, or store less (fewer --layers / --pool, "
                                f"--save-dtype float16)")


def unallocated_bytes(path: str | Path) -> int:
    """Bytes of a (sparse) file not yet backed by disk blocks: what writing all of it still needs."""
    st = os.stat(path)
    return max(0, st.st_size - getattr(st, "st_blocks", 0) * 512)


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


def parted_files(folder: Path, manifest: Mapping, file: str) -> list[Path] | None:
    """The per-part files holding ``file`` of a folder whose parts are not joined yet, else None."""
    parts = manifest.get("parts") or {}
    if parts.get("consolidated", True):
        return None
    return [folder / PARTS_DIR / item["name"] / file for item in parts["items"]]


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
        pixels as its patch features: H, W = its patch grid times the patch size (ignore index 255)."""
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
        lines = (self.path / file).read_text(encoding="utf-8").split("\n")[: self.num_items]
        if not valid_only or self.all_valid:
            return lines
        return [p for p, ok in zip(lines, self.valid) if ok]

    @property
    def failures(self) -> list[dict]:
        """The failure records (index, path, reason) of this extraction."""
        file = self.path / FAILURES_FILE
        if not file.is_file():
            return []
        return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]

    def __repr__(self) -> str:
        return (f"FeatureDir({str(self.path)!r}, items={self.num_items}, valid={self.num_valid}, "
                f"features={self.names})")


def read_manifest(path: str | Path) -> dict:
    """Parse ``manifest.json`` of a feature folder (finished or not) and check its format."""
    folder = Path(path)
    if not folder.exists():
        raise FeatureStoreError(f"{folder}: no such feature folder; create it with `sail-vision extract`")
    if not folder.is_dir():
        raise FeatureStoreError(f"{folder}: not a folder; pass the --out folder of `sail-vision extract`")
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FeatureStoreError(f"{folder}: no {MANIFEST_FILE}; this is not a sail-vision feature folder "
                                f"(or its extraction never started)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FeatureStoreError(f"{manifest_path}: malformed JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise FeatureStoreError(f"{manifest_path}: not a sail-vision feature manifest "
                                f"(expected \"format\": \"{FORMAT_NAME}\")")
    version = manifest.get("version")
    if version != FORMAT_VERSION:
        raise FeatureStoreError(f"{manifest_path}: format version {version!r} is not supported by this "
                                f"sail-vision (it reads version {FORMAT_VERSION}); upgrade sail-vision or "
                                f"re-extract")
    return manifest


def _check_manifest(folder: Path, manifest: dict) -> None:
    where = folder / MANIFEST_FILE

    def fail(message: str):
        raise FeatureStoreError(f"{where}: {message}")

    num_items = manifest.get("num_items")
    if not isinstance(num_items, int) or isinstance(num_items, bool) or num_items < 0:
        fail(f"\"num_items\" must be a non-negative integer, got {num_items!r}")
    features = manifest.get("features")
    if not isinstance(features, dict):
        fail("\"features\" must be an object mapping names to file descriptions")
    valid_file = manifest.get("valid")
    if not isinstance(valid_file, str):
        fail("\"valid\" (the per-row validity file) is missing")
    _check_array(folder, valid_file, (num_items,), fail, kinds="b")
    for name, info in features.items():
        if not isinstance(info, dict) or not isinstance(info.get("file"), str):
            fail(f"feature {name!r} has no \"file\"")
        shape, dtype = _check_stored(folder, manifest, info["file"], fail)
        if list(shape) != list(info.get("shape", shape)) or str(dtype) != info.get("dtype", str(dtype)):
            fail(f"feature {name!r}: {info['file']} holds {shape} {dtype}, but the manifest says "
                 f"{info.get('shape')} {info.get('dtype')}")
        layout = info.get("layout", "pooled")
        if layout not in LAYOUTS:
            fail(f"feature {name!r}: unknown layout {layout!r}")
        if layout == "rows":
            if not isinstance(info.get("offsets"), str):
                fail(f"feature {name!r}: native-resolution patch rows need an \"offsets\" file")
            _check_array(folder, info["offsets"], (num_items + 1,), fail, kinds="iu")
        elif not shape or shape[0] != num_items:
            fail(f"feature {name!r}: {info['file']} has {shape[0] if shape else 0} rows, expected {num_items}")
    if manifest.get("masks"):
        _check_masks(folder, manifest, num_items, fail)
    if manifest.get("labels"):
        _check_array(folder, manifest["labels"], (num_items,), fail, kinds="iu")
    if manifest.get("patch_grids"):
        _check_array(folder, manifest["patch_grids"], (num_items, 2), fail, kinds="iu")
    classes = manifest.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        fail("\"classes\" must be a list of strings or null")
    if manifest.get("paths"):
        paths_file = folder / manifest["paths"]
        if not paths_file.is_file():
            fail(f"{manifest['paths']} is missing")


def _check_stored(folder: Path, manifest: dict, file: str, fail, kinds: str | None = None):
    """(shape, dtype) of ``file`` as the reader sees it: the file itself, or its parts' files joined
    along rows while they are not consolidated (each checked, all of one dtype; trailing dims from the first)."""
    parted = parted_files(folder, manifest, file)
    if parted is None:
        return _check_array(folder, file, None, fail, kinds=kinds)
    found = [_check_array(folder, str(f.relative_to(folder)), None, fail, kinds=kinds) for f in parted]
    if len({d for _, d in found}) > 1:
        fail(f"the parts' {file} differ in dtype ({', '.join(sorted({str(d) for _, d in found}))}); re-extract")
    return (sum(s[0] for s, _ in found), *found[0][0][1:]), found[0][1]


def _check_masks(folder: Path, manifest: dict, num_items: int, fail) -> None:
    info = manifest["masks"]
    if not isinstance(info, dict) or not isinstance(info.get("file"), str) or info.get("layout") not in ("grid", "rows"):
        fail("\"masks\" needs a \"file\" and a \"layout\" (grid or rows)")
    shape, dtype = _check_stored(folder, manifest, info["file"], fail, kinds="u")
    if dtype != np.uint8:
        fail(f"{info['file']} must hold uint8 labels")
    if info["layout"] == "grid":
        if len(shape) != 3 or shape[0] != num_items:
            fail(f"{info['file']} has shape {shape}, expected ({num_items}, H, W)")
        return
    if not isinstance(info.get("offsets"), str):
        fail("native-resolution masks (\"layout\": \"rows\") need an \"offsets\" file")
    _check_array(folder, info["offsets"], (num_items + 1,), fail, kinds="iu")
    last = int(np.load(folder / info["offsets"], mmap_mode="r")[-1])
    if len(shape) != 1 or shape[0] != last:
        fail(f"{info['file']} has shape {shape}, but {info['offsets']} ends at {last}")


def _check_array(folder: Path, file: str, shape, fail, kinds: str | None = None):
    path = folder / file
    if not path.is_file():
        fail(f"{file} is missing")
    try:
        actual_shape, dtype = _npy_header(path)
    except (OSError, ValueError) as exc:
        fail(f"{file} is not a readable .npy file ({exc})")
    if shape is not None and actual_shape != tuple(shape):
        fail(f"{file} has shape {actual_shape}, expected {tuple(shape)}")
    if kinds is not None and dtype.kind not in kinds:
        fail(f"{file} has dtype {dtype}, expected kind {kinds!r}")
    return actual_shape, dtype


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
    _check_manifest(folder, manifest)
    return FeatureDir(folder, manifest)


def _software_versions() -> dict[str, str]:
    import platform

    from . import __version__

    versions = {"sail_vision": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for module in ("torch", "transformers", "PIL"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - versions are informative only
            pass
    return versions


def write_feature_dir(path: str | Path, features: Mapping[str, np.ndarray], labels=None,
                      classes: Sequence[str] | None = None, paths: Sequence[str] | None = None, *,
                      valid=None, overwrite: bool = False, masks=None, mask_meta: Mapping | None = None,
                      patch_size: int | None = None, **manifest_extra) -> FeatureDir:
    """Write plain arrays as a complete feature folder and return it opened.

    ``features`` maps names (``layer-{k}_{pool}`` for extractor-style names, or any identifier)
    to arrays whose first dimension is the number of items N. ``labels`` (N,) ints, ``classes``
    names of the label values, ``paths`` (N,) strings and ``valid`` (N,) bools are optional;
    ``masks`` is each item's (H, W) label map (an (N, H, W) array, or a list of N (H, W) arrays,
    values 0..255, 255 ignored), with ``mask_meta`` = {reduce_zero_label, num_classes, classes} for
    the manifest entry; maps of different sizes are stored as native-resolution rows and need
    ``patch_size`` (each H, W a multiple of it; ``patch_grids.npy`` is written from them).
    Other keyword arguments go into the manifest as they are.
    """
    folder = Path(path)
    if not features:
        raise FeatureStoreError("write_feature_dir needs at least one feature array")
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FeatureStoreError(f"{folder}: exists and is not empty; pass overwrite=True to replace it")
    arrays = {}
    for name, array in features.items():
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$", name) or name.endswith(".npy"):
            raise FeatureStoreError(f"feature name {name!r}: use letters, digits, '-', '_', '.', e.g. layer-4_mean")
        arrays[name] = np.asarray(array)
    lengths = {name: (a.shape[0] if a.ndim else None) for name, a in arrays.items()}
    num_items = next(iter(lengths.values()))
    if num_items is None or any(n != num_items for n in lengths.values()):
        raise FeatureStoreError(f"every feature needs the same number of rows N; got {lengths}")
    valid_array = np.ones(num_items, bool) if valid is None else np.asarray(valid, dtype=bool)
    if valid_array.shape != (num_items,):
        raise FeatureStoreError(f"valid must have shape ({num_items},), got {valid_array.shape}")
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (num_items,) or labels.dtype.kind not in "iu":
            raise FeatureStoreError(f"labels must be ({num_items},) integers, got {labels.shape} {labels.dtype}")
        labels = labels.astype(np.int64)
    if paths is not None:
        paths = [str(p) for p in paths]
        if len(paths) != num_items or any("\n" in p for p in paths):
            raise FeatureStoreError(f"paths must be {num_items} strings without newlines")
    mask_maps = None if masks is None else _checked_masks(masks, num_items, patch_size)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST_FILE).unlink(missing_ok=True)
    entries = {}
    for name, array in arrays.items():
        file = f"{name}.npy"
        atomic_save_npy(folder / file, array)
        layer, pool = parse_feature_name(name)
        entries[name] = {"file": file, "shape": list(array.shape), "dtype": str(array.dtype), "layer": layer,
                         "pool": pool, "layout": "grid" if (pool == "patch" and array.ndim == 4) else "pooled"}
    atomic_save_npy(folder / VALID_FILE, valid_array)
    if labels is not None:
        atomic_save_npy(folder / LABELS_FILE, labels)
    if paths is not None:
        atomic_write_text(folder / PATHS_FILE, "".join(p + "\n" for p in paths))
    atomic_write_text(folder / FAILURES_FILE, "")
    layers = sorted({e["layer"] for e in entries.values() if e["layer"] is not None})
    pools = list(dict.fromkeys(e["pool"] for e in entries.values() if e["pool"] is not None))
    manifest = {
        "format": FORMAT_NAME, "version": FORMAT_VERSION, "complete": True, "num_items": int(num_items),
        "num_valid": int(valid_array.sum()), "num_failed": int((~valid_array).sum()),
        "layers": layers, "pools": pools, "features": entries, "valid": VALID_FILE,
        "labels": LABELS_FILE if labels is not None else None,
        "classes": list(classes) if classes is not None else None,
        "paths": PATHS_FILE if paths is not None else None,
        "failures": {"file": FAILURES_FILE, "count": 0, "items": []}, "software": _software_versions(),
    }
    if mask_maps is not None:
        manifest["masks"] = _write_masks(folder, mask_maps, patch_size, mask_meta or {})
        if manifest["masks"]["layout"] == "rows":
            manifest["patch_grids"] = PATCH_GRIDS_FILE
    manifest.update(manifest_extra)
    write_manifest(folder, manifest)
    return open_feature_dir(folder)


def _checked_masks(masks, num_items: int, patch_size: int | None) -> list[np.ndarray] | np.ndarray:
    """``write_feature_dir``'s masks as one (N, H, W) uint8 array, or a list of (H, W) ones."""
    maps = list(masks) if not isinstance(masks, np.ndarray) else masks
    if len(maps) != num_items:
        raise FeatureStoreError(f"masks must hold one label map per item ({num_items}), got {len(maps)}")
    checked = []
    for i, m in enumerate(maps):
        m = np.asarray(m)
        if m.ndim != 2 or m.dtype.kind not in "iu" or (m.size and (m.min() < 0 or m.max() > 255)):
            raise FeatureStoreError(f"mask {i}: must be an (H, W) integer array of labels 0..255, got "
                                    f"{m.shape} {m.dtype}")
        checked.append(m.astype(np.uint8))
    if len({m.shape for m in checked}) <= 1:
        return np.stack(checked) if checked else np.zeros((0, 0, 0), np.uint8)
    if patch_size is None or patch_size <= 0:
        raise FeatureStoreError("masks of different sizes are stored as native-resolution rows: pass patch_size")
    bad = [i for i, m in enumerate(checked) if m.shape[0] % patch_size or m.shape[1] % patch_size]
    if bad:
        raise FeatureStoreError(f"mask {bad[0]}: {checked[bad[0]].shape} is not a multiple of patch_size {patch_size}")
    return checked


def _write_masks(folder: Path, maps, patch_size: int | None, meta: Mapping) -> dict:
    native = isinstance(maps, list)
    entry = mask_manifest_entry(native, reduce_zero_label=meta.get("reduce_zero_label", False),
                                num_classes=meta.get("num_classes"), classes=meta.get("classes"))
    if not native:
        atomic_save_npy(folder / MASKS_FILE, maps)
        return entry
    counts = [m.size for m in maps]
    atomic_save_npy(folder / MASKS_FILE, np.concatenate([m.reshape(-1) for m in maps]))
    atomic_save_npy(folder / MASK_OFFSETS_FILE, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    grids = np.array([(m.shape[0] // patch_size, m.shape[1] // patch_size) for m in maps], dtype=np.int32)
    atomic_save_npy(folder / PATCH_GRIDS_FILE, grids)
    return entry
