"""Features, labels and class names for probes: the one module that reads feature folders.

Features stay memory-mapped: every pass reads rows in chunks, so a training set larger than RAM
(ImageNet: 1.28 M x 4096 float16, about 10 GB) streams from disk. Everything the probes take
from a feature folder goes through :func:`load_feature_dir` (the store's reader:
``open_feature_dir``, ``FeatureDir.feature / labels / classes / paths / valid / manifest``) and
:meth:`ProbeData.read`, so a change of the store's layout is a change here only.

Labels are class *indices* into ``ProbeData.classes`` (the class names) when names are known:
from the folder's manifest, from ``--label-pattern`` or from a ``--classes`` file. Train and val
are aligned by class name (:func:`align_classes`); labels without names are compared as numbers,
and only when neither side has names.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .defaults import DEFAULT_CHUNK_ROWS
from .errors import ProbeDataError
from .inputs import FeatureInput
from .labels import (align_classes, as_labels, check_class_names, check_label_range, labels_from_paths,
                     name_differences, num_classes_of)
from .provenance import arrays_provenance, folder_provenance, input_provenance



@dataclass
class ProbeData:
    """Pooled features (name -> (rows, D) array, usually a memmap), labels, class names and origin.

    ``row_index`` (when set) maps row i to row ``row_index[i]`` of the arrays: an extraction folder
    with failed images stays memory-mapped and its failed rows are skipped on reading. ``num_items``,
    ``paths`` and ``failures`` describe every row of the folder, failed ones included.
    """

    features: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    classes: list[str] | None = None
    feature_files: dict[str, str] = field(default_factory=dict)
    row_index: np.ndarray | None = None
    provenance: dict = field(default_factory=lambda: arrays_provenance([]))
    paths: list[str] | None = None
    num_items: int | None = None
    failures: dict[int, str] = field(default_factory=dict)
    label_source: str = ""
    #: Stored features that are not probe inputs (name -> why), named in the error when one is asked for.
    unusable: dict[str, str] = field(default_factory=dict)
    #: How to open these rows again (``load_feature_dir`` arguments), when they came from a folder and
    #: labels that can be re-read; a saved k-NN head too large to copy refers to its bank this way.
    reload: dict | None = None

    @property
    def num_rows(self) -> int:
        if self.row_index is not None:
            return int(self.row_index.size)
        return int(next(iter(self.features.values())).shape[0])

    @property
    def item_of_row(self) -> np.ndarray:
        """(rows,) index of each usable row among all the folder's items (failed items skipped)."""
        return np.arange(self.num_rows) if self.row_index is None else self.row_index

    @property
    def total_items(self) -> int:
        """Rows of the folder, failed items included."""
        return self.num_rows if self.num_items is None else int(self.num_items)

    def require(self, feature_input: FeatureInput) -> None:
        """Raise a clear error unless every part of ``feature_input`` is here."""
        for part in feature_input.parts:
            if part in self.unusable:
                raise ProbeDataError(f"{self.source}: feature {part!r} {self.unusable[part]}")
            if part not in self.features:
                raise ProbeDataError(f"{self.source}: no feature {part!r}; available: "
                                     f"{', '.join(self.features) or 'none'}")

    def dim(self, feature_input: FeatureInput) -> int:
        self.require(feature_input)
        return int(sum(self.features[p].shape[-1] for p in feature_input.parts))

    def part_dims(self, feature_input: FeatureInput) -> list[int]:
        self.require(feature_input)
        return [int(self.features[p].shape[-1]) for p in feature_input.parts]

    def stored_dtype(self, name: str) -> np.dtype:
        return self.features[name].dtype

    def read(self, names: Sequence[str], rows=None, dtype=np.float32) -> dict[str, np.ndarray]:
        """Copies of the given features for ``rows`` (sorted indices, a slice, or None for all), as
        ``dtype`` (None keeps the stored dtype, e.g. float16 for transport to a GPU)."""
        rows = slice(None) if rows is None else rows
        out = {}
        for name in names:
            array = self.features[name]
            block = array[rows] if self.row_index is None else array[self.row_index[rows]]
            out[name] = np.asarray(block, dtype=dtype if dtype is not None else block.dtype)
        return out

    def read_into(self, name: str, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Copy one feature's ``rows`` (indices) into ``out`` ((len(rows), D), any dtype) without a
        temporary copy; returns ``out``."""
        array = self.features[name]
        index = np.asarray(rows) if self.row_index is None else self.row_index[rows]
        if out.dtype == array.dtype and isinstance(array, np.ndarray):  # not a PartedArray (unjoined parts)
            np.take(array, index, axis=0, out=out, mode="clip")
        else:
            out[...] = array[index]
        return out

    def read_pinned(self, name: str, rows: np.ndarray):
        """One feature's ``rows`` as a torch tensor in pinned host memory (CUDA only), in the stored dtype
        when that is a float (nothing is rounded; float16 stays half the bytes of float32), else float32."""
        import torch

        stored = self.features[name].dtype
        dtype = stored if stored.kind == "f" else np.dtype(np.float32)
        out = torch.empty((len(rows), *self.features[name].shape[1:]),
                          dtype=torch.from_numpy(np.empty(0, dtype)).dtype, pin_memory=True)
        self.read_into(name, rows, out.numpy())
        return out

    def gather(self, feature_input: FeatureInput, rows: np.ndarray | None = None) -> np.ndarray:
        """The (rows, D) float32 matrix of one feature input (parts concatenated); loads into RAM."""
        return feature_input.concat(self.read(feature_input.parts, rows))

    def input_provenance(self, feature_input: FeatureInput) -> dict:
        """Where the features of ``feature_input`` came from (see :mod:`.provenance`)."""
        return input_provenance(self.provenance, feature_input.parts, self.part_dims(feature_input))

    def class_name(self, label: int) -> str:
        return self.classes[label] if self.classes else str(label)

    def subset_features(self, names: Sequence[str]) -> "ProbeData":
        """The same data keeping only ``names`` (each must be here)."""
        for name in names:
            self.require(FeatureInput((name,)))
        return replace(self, features={n: self.features[n] for n in names},
                       feature_files={n: f for n, f in self.feature_files.items() if n in names})


# ------------------------------------------------------------------------------------------- loading
def load_feature_dir(path: str | Path, names: Sequence[str] | None = None, *, labels=None,
                     label_pattern: str | None = None, classes: Sequence[str] | None = None,
                     tokens: bool = False) -> ProbeData:
    """Open an extraction output (``sail-vision extract --out``) for probing.

    ``names``: the stored features needed (default: every pooled feature). ``labels`` (array or
    ``.npy`` path) replaces the stored labels; ``label_pattern`` derives them (and their class names)
    from file names; ``classes`` names labels that have no names (given ``labels``, or a folder whose
    manifest has none). Only valid rows (images that were processed) are used. ``tokens``: read patch
    features (fixed-resolution ``grid`` layout) as (rows, nh*nw, D) token arrays, for the attentive probe,
    instead of pooled features (then the default ``names`` is every such patch feature).
    """
    from ..feature_store import open_feature_dir

    folder = open_feature_dir(path)
    entries = folder.manifest["features"]
    layouts = {n: entries[n].get("layout", "pooled") for n in folder.names}
    usable = [n for n, layout in layouts.items() if layout == ("grid" if tokens else "pooled")]
    wanted = list(names) if names is not None else usable
    if tokens:
        unusable = {n: ("is pooled (one vector per image); --method attentive reads patch tokens such as "
                        "layer-K_patch" if layout == "pooled" else
                        f"holds native-resolution patch tokens ({layout} layout: a different count per image); "
                        f"the attentive probe needs fixed-resolution ones (extract with --resolution)")
                    for n, layout in layouts.items() if n not in usable}
    else:
        unusable = {n: f"holds patch tokens ({layouts[n]} layout); probes need one vector per image "
                       f"such as layer-K_mean or layer-K_end (or --method attentive)" for n in folder.names
                    if n not in usable}
    features, files = {}, {}
    for name in wanted:
        array = folder.feature(name, valid_only=False)  # stays memory-mapped; raises for unknown names
        if name in unusable or array.ndim != (4 if tokens else 2):
            raise ProbeDataError(f"{folder.path}: feature {name!r} {unusable.get(name, 'is not (rows, D)')}")
        if tokens:
            if not isinstance(array, np.ndarray):
                raise ProbeDataError(f"{folder.path}: feature {name!r} is stored in parts; run `sail-vision "
                                     f"consolidate {folder.path}` to join them before an attentive probe")
            array = array.reshape(array.shape[0], -1, array.shape[-1])  # (rows, nh*nw, D), a view of the map
        features[name] = array
        files[name] = str(folder.path / entries[name].get("file", f"{name}.npy"))
    if not features:
        raise ProbeDataError(f"{folder.path}: no {'patch' if tokens else 'pooled'} features to probe (found "
                             f"{', '.join(folder.names)})")
    valid = np.asarray(folder.valid, dtype=bool)
    row_index = None if valid.all() else np.flatnonzero(valid)
    num_rows = int(valid.sum())
    folder_classes = folder.classes
    class_names = list(folder_classes) if folder_classes is not None else None
    if class_names is not None:
        check_class_names(class_names, f"{folder.path / 'manifest.json'} \"classes\"")
    names_from = f"{folder.path / 'manifest.json'}"
    if labels is not None:
        label_where = str(labels) if isinstance(labels, (str, Path)) else f"labels given for {folder.path}"
        raw = _load_npy(labels, "labels") if isinstance(labels, (str, Path)) else labels
        label_array, class_names, names_from = as_labels(raw, label_where, num_rows), None, "--classes"
    elif label_pattern:
        label_where = f"--label-pattern on {folder.path}"
        label_array, class_names = labels_from_paths(folder.paths, label_pattern, str(folder.path))
        names_from = "--label-pattern"
    else:
        stored = folder.labels
        label_where = str(folder.path / "labels.npy")
        label_array = None if stored is None else as_labels(stored, label_where, num_rows)
    if classes is not None:
        if class_names is not None and list(classes) != class_names:
            raise ProbeDataError(f"--classes differs from the class names of {folder.path} (from {names_from}): "
                                 f"{name_differences(class_names, list(classes))}; the labels are already named, "
                                 f"so drop --classes (or replace the labels with --train-labels / --val-labels)")
        class_names, names_from = list(classes), "--classes"
    check_label_range(label_array, class_names, label_where, names_from)
    failures = {}
    for record in folder.failures:
        if isinstance(record, dict) and isinstance(record.get("index"), int):
            failures[int(record["index"])] = str(record.get("reason", "failed"))
    reload = None
    if not (labels is not None and not isinstance(labels, (str, Path))):
        reload = {"feature_dir": str(folder.path.absolute()),
                  "labels": str(Path(labels).absolute()) if labels is not None else None,
                  "label_pattern": label_pattern, "classes": list(classes) if classes is not None else None}
    return ProbeData(features, label_array, str(folder.path), class_names if label_array is not None else None,
                     files, row_index, folder_provenance(folder.manifest), folder.paths_of(valid_only=False) or None,
                     folder.num_items, failures, label_where, unusable, reload)


def _load_npy(path, what: str, mmap: bool = False) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ProbeDataError(f"{path}: no such {what} file")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ProbeDataError(f"{path}: not a readable .npy {what} file ({exc})") from None


def load_arrays(features: str | Path | np.ndarray | Mapping[str, str | Path | np.ndarray], labels=None,
                *, name: str | None = None, classes: Sequence[str] | None = None) -> ProbeData:
    """Plain arrays as probe data: ``features`` an (N, D) array or ``.npy`` path (memory-mapped), or a
    mapping of names to those; ``labels`` an (N,) array or ``.npy`` path; ``classes`` the names of the
    label indices. A single file's feature is named after its file stem (or ``name``)."""
    if not isinstance(features, Mapping):
        default = name or (Path(features).stem if isinstance(features, (str, Path)) else "features")
        features = {default: features}
    arrays, files, source = {}, {}, []
    for key, value in features.items():
        if isinstance(value, (str, Path)):
            array = _load_npy(value, "features", mmap=True)
            files[key] = str(Path(value).absolute())
            source.append(str(value))
        else:
            array = np.asarray(value)
            source.append(f"<array {key}>")
        if array.ndim not in (2, 3):
            raise ProbeDataError(f"{files.get(key, key)}: features must be an (N, D) array (or (N, P, D) patch "
                                 f"tokens for --method attentive), got shape {array.shape}")
        if array.dtype.kind not in "fiu":
            raise ProbeDataError(f"{files.get(key, key)}: features must be numbers, got dtype {array.dtype}")
        arrays[key] = array
    lengths = {k: a.shape[0] for k, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ProbeDataError(f"feature arrays have different numbers of rows: {lengths}")
    where = ", ".join(source)
    label_array, label_where = None, ""
    if labels is not None:
        label_where = str(labels) if isinstance(labels, (str, Path)) else f"labels of {where}"
        raw = _load_npy(labels, "labels") if isinstance(labels, (str, Path)) else labels
        label_array = as_labels(raw, label_where, next(iter(lengths.values())))
    class_names = list(classes) if classes is not None and label_array is not None else None
    check_label_range(label_array, class_names, label_where, "--classes")
    return ProbeData(arrays, label_array, where, class_names, files,
                     provenance=arrays_provenance(sorted(files.values())), label_source=label_where)


def renamed_single(data: ProbeData, name: str) -> ProbeData:
    """Plain arrays of one feature under another name (``--val-features`` read as the input trained on)."""
    if len(data.features) != 1:
        raise ProbeDataError(f"{data.source}: expected one feature array, got {', '.join(data.features)}")
    array = next(iter(data.features.values()))
    file = next(iter(data.feature_files.values()), None)
    return replace(data, features={name: array}, feature_files={name: file} if file else {})


# ------------------------------------------------------------------------------------------- checks
def check_finite(data: ProbeData, names: Sequence[str], chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
    """Raise if any feature holds NaN or Inf, saying how many values and the first row."""
    for name in names:
        if data.features[name].dtype.kind in "iu":
            continue
        bad_values, first_row = 0, None
        for start in range(0, data.num_rows, chunk_rows):
            block = data.read([name], slice(start, start + chunk_rows), dtype=None)[name]
            finite = np.isfinite(block)
            if not finite.all():
                bad_values += int(finite.size - finite.sum())
                if first_row is None:
                    first_row = start + int(np.flatnonzero(~finite.reshape(len(block), -1).all(axis=1))[0])
        if bad_values:
            raise ProbeDataError(
                f"{data.feature_files.get(name, data.source)}: feature {name!r} holds {bad_values} NaN/Inf "
                f"values, first at row {first_row}; re-extract with --save-dtype float32 or drop those rows")


def validate_train_val(train: ProbeData, val: ProbeData | None, inputs: Sequence[FeatureInput],
                       chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[int, ProbeData | None]:
    """Check the probe inputs (labels, finite values, widths, and that val's features were made like train's:
    the same provenance, as ``--predict`` checks); returns (number of classes, val aligned to train's classes)."""
    from .inputs import stored_parts

    for data, role in ((train, "train"), (val, "val")):
        if data is None:
            continue
        if data.num_rows == 0:
            raise ProbeDataError(f"{role} data {data.source} has no usable rows ({data.total_items} rows, all of "
                                 f"failed images); see its failures.jsonl")
        if data.labels is None:
            raise ProbeDataError(f"{role} data {data.source} has no labels; extract from class folders or a "
                                 f"labelled list, or pass --{role}-labels / --label-pattern")
        for feature_input in inputs:
            data.require(feature_input)
        check_finite(data, stored_parts(inputs), chunk_rows)
    present = np.unique(train.labels)
    if present.size < 2:
        only = train.class_name(int(present[0])) if present.size else "-"
        raise ProbeDataError(f"train data {train.source}: every row has label {only}; a probe needs at least "
                             f"two classes")
    if val is not None:
        from .provenance import mismatches

        for feature_input in inputs:
            if train.dim(feature_input) != val.dim(feature_input):
                raise ProbeDataError(f"feature {feature_input.name!r}: {train.dim(feature_input)} dims in train "
                                     f"({train.source}) but {val.dim(feature_input)} in val ({val.source})")
            found = mismatches(train.input_provenance(feature_input), val.input_provenance(feature_input))
            if found:
                raise ProbeDataError(f"val data {val.source}: its {feature_input.name!r} features were not made like "
                                     f"train's ({train.source}), so a head trained on one cannot be scored on the "
                                     f"other: {'; '.join(found)}")
        val = align_classes(train, val)
    return num_classes_of(train), val


def split_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit_rows, holdout_rows), both sorted: a seeded split stratified by class when possible."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise ProbeDataError(f"--holdout-fraction must be between 0 and 1, got {fraction}")
    rows = np.arange(labels.shape[0])
    counts = np.bincount(labels)
    num_holdout = int(round(fraction * rows.size))
    if num_holdout < 1 or num_holdout >= rows.size:
        raise ProbeDataError(f"--holdout-fraction {fraction} of {rows.size} training rows holds out {num_holdout}, "
                             f"leaving no rows to select on or to train on; use more training rows, another "
                             f"--holdout-fraction, or a single grid point (no selection)")
    present = int((counts > 0).sum())
    stratify = labels if (counts[counts > 0].min() >= 2 and present <= num_holdout <= rows.size - present) else None
    fit, held = train_test_split(rows, test_size=num_holdout, random_state=seed, stratify=stratify)
    return np.sort(fit), np.sort(held)


def feature_stats(data: ProbeData, name: str, rows: np.ndarray | None = None,
                  chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) float32 over ``rows`` of one stored feature, read in chunks (float64 sums)."""
    dim = data.features[name].shape[1]
    rows = np.arange(data.num_rows) if rows is None else rows
    total = np.zeros(dim, np.float64)
    square = np.zeros(dim, np.float64)
    for start in range(0, rows.size, chunk_rows):
        block = data.read([name], rows[start:start + chunk_rows], dtype=np.float64)[name]
        total += block.sum(0)
        square += np.square(block).sum(0)
    mean = total / max(rows.size, 1)
    var = np.maximum(square / max(rows.size, 1) - mean ** 2, 0.0)
    std = np.sqrt(var)
    std[std < 1e-6 * max(float(std.max(initial=0.0)), 1e-12)] = 1.0  # constant dimensions stay as they are
    return mean.astype(np.float32), std.astype(np.float32)
