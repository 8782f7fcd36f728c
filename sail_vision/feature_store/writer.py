"""Writing plain arrays as a complete feature folder (:func:`write_feature_dir`): for tests, demos and
features made outside ``sail-vision extract``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .atomic_io import atomic_save_npy, atomic_write_text
from .format import (FAILURES_FILE, LABELS_FILE, MANIFEST_FILE, MASK_OFFSETS_FILE, MASKS_FILE, PATCH_GRIDS_FILE,
                     PATHS_FILE, VALID_FILE, FeatureStoreError, manifest_header, mask_manifest_entry,
                     parse_feature_name, software_versions, write_manifest)
from .reader import FeatureDir, open_feature_dir


def write_lines(path: str | Path, lines: Sequence[str]) -> None:
    """Atomically write a one-entry-per-row text file (``paths.txt``, ``mask_paths.txt``): each entry and
    a ``\n``. An entry holding ``\n`` would shift every later row, so it is refused (a :class:`FeatureStoreError`
    naming the row)."""
    bad = next((row for row, line in enumerate(lines) if "\n" in line), None)
    if bad is not None:
        raise FeatureStoreError(f"{Path(path).name}: row {bad} ({lines[bad]!r}) holds a line break; a name must be "
                                f"one line (row {bad} would shift every row after it)")
    atomic_write_text(path, "".join(line + "\n" for line in lines))


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
    the manifest entry, or float depth maps in metres (0 = no measurement) with ``mask_meta`` =
    {depth_scale} (16-bit PNG values per metre they came from); maps of different sizes are stored as native-resolution rows and need
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
    depth = (mask_meta or {}).get("depth_scale") is not None
    mask_maps = None if masks is None else _checked_masks(masks, num_items, patch_size, depth)
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
        write_lines(folder / PATHS_FILE, paths)
    atomic_write_text(folder / FAILURES_FILE, "")
    layers = sorted({e["layer"] for e in entries.values() if e["layer"] is not None})
    pools = list(dict.fromkeys(e["pool"] for e in entries.values() if e["pool"] is not None))
    manifest = {
        **manifest_header(complete=True), "num_items": int(num_items),
        "num_valid": int(valid_array.sum()), "num_failed": int((~valid_array).sum()),
        "layers": layers, "pools": pools, "features": entries, "valid": VALID_FILE,
        "labels": LABELS_FILE if labels is not None else None,
        "classes": list(classes) if classes is not None else None,
        "paths": PATHS_FILE if paths is not None else None,
        "failures": {"file": FAILURES_FILE, "count": 0, "items": []}, "software": software_versions(),
    }
    if mask_maps is not None:
        manifest["masks"] = _write_masks(folder, mask_maps, patch_size, mask_meta or {})
        if manifest["masks"]["layout"] == "rows":
            manifest["patch_grids"] = PATCH_GRIDS_FILE
    manifest.update(manifest_extra)
    write_manifest(folder, manifest)
    return open_feature_dir(folder)


def _checked_masks(masks, num_items: int, patch_size: int | None,
                   depth: bool = False) -> list[np.ndarray] | np.ndarray:
    """``write_feature_dir``'s masks as one (N, H, W) uint8 (float32 with ``depth``) array, or a list of
    (H, W) ones."""
    maps = list(masks) if not isinstance(masks, np.ndarray) else masks
    if len(maps) != num_items:
        raise FeatureStoreError(f"masks must hold one label map per item ({num_items}), got {len(maps)}")
    checked = []
    for i, m in enumerate(maps):
        m = np.asarray(m)
        if depth:
            if m.ndim != 2 or m.dtype.kind != "f" or not np.isfinite(m).all() or (m < 0).any():
                raise FeatureStoreError(f"depth map {i}: must be an (H, W) float array of finite metres >= 0 "
                                        f"(0 = no measurement), got {m.shape} {m.dtype}")
            checked.append(m.astype(np.float32))
            continue
        if m.ndim != 2 or m.dtype.kind not in "iu" or (m.size and (m.min() < 0 or m.max() > 255)):
            raise FeatureStoreError(f"mask {i}: must be an (H, W) integer array of labels 0..255, got "
                                    f"{m.shape} {m.dtype}")
        checked.append(m.astype(np.uint8))
    if len({m.shape for m in checked}) <= 1:
        return np.stack(checked) if checked else np.zeros((0, 0, 0), np.float32 if depth else np.uint8)
    if patch_size is None or patch_size <= 0:
        raise FeatureStoreError("masks of different sizes are stored as native-resolution rows: pass patch_size")
    bad = [i for i, m in enumerate(checked) if m.shape[0] % patch_size or m.shape[1] % patch_size]
    if bad:
        raise FeatureStoreError(f"mask {bad[0]}: {checked[bad[0]].shape} is not a multiple of patch_size {patch_size}")
    return checked


def _write_masks(folder: Path, maps, patch_size: int | None, meta: Mapping) -> dict:
    native = isinstance(maps, list)
    entry = mask_manifest_entry(native, reduce_zero_label=meta.get("reduce_zero_label", False),
                                num_classes=meta.get("num_classes"), classes=meta.get("classes"),
                                depth_scale=meta.get("depth_scale"))
    if not native:
        atomic_save_npy(folder / MASKS_FILE, maps)
        return entry
    counts = [m.size for m in maps]
    atomic_save_npy(folder / MASKS_FILE, np.concatenate([m.reshape(-1) for m in maps]))
    atomic_save_npy(folder / MASK_OFFSETS_FILE, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    grids = np.array([(m.shape[0] // patch_size, m.shape[1] // patch_size) for m in maps], dtype=np.int32)
    atomic_save_npy(folder / PATCH_GRIDS_FILE, grids)
    return entry
