"""Features and labels for probes: loading, validation, statistics and shuffled chunked streaming.

Features stay memory-mapped: every pass reads them in chunks of rows, so a training set larger
than RAM (ImageNet: 1.28 M x 4096 float16, about 10 GB) streams from disk. A *feature input* is
one stored feature or a concatenation of several (``layer-29_end+layer-32_end+layer-32_mean``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from ..errors import SailVisionError

from .defaults import DEFAULT_BLOCK_ROWS, DEFAULT_CHUNK_ROWS  # noqa: F401 - re-exported


class ProbeDataError(SailVisionError, ValueError):
    """Features or labels given to a probe are missing, inconsistent or not finite."""


@dataclass(frozen=True)
class FeatureInput:
    """What one family of heads reads: a stored feature, or several concatenated along D."""

    parts: tuple[str, ...]

    @property
    def name(self) -> str:
        return "+".join(self.parts)


def parse_feature_inputs(specs: Sequence[str]) -> list[FeatureInput]:
    """``['layer-4_mean', 'layer-3_end+layer-4_end']`` -> feature inputs (duplicates removed)."""
    inputs: list[FeatureInput] = []
    for spec in specs:
        for item in str(spec).split(","):
            parts = tuple(p.strip() for p in item.split("+") if p.strip())
            if not item.strip():
                continue
            if not parts:
                raise ProbeDataError(f"--features {spec!r}: empty feature name")
            if len(set(parts)) != len(parts):
                raise ProbeDataError(f"--features {item!r}: a feature appears twice in one concatenation")
            feature_input = FeatureInput(parts)
            if feature_input not in inputs:
                inputs.append(feature_input)
    if not inputs:
        raise ProbeDataError("no feature inputs given; pass --features NAME [NAME+NAME ...]")
    return inputs


def concat_last_layers(available: Sequence[str], n: int, token: str = "end") -> FeatureInput:
    """DINOv2's input: the ``token`` feature of the last ``n`` layers plus the mean of the last layer's
    patch tokens, built from the stored feature names (``layer-{k}_{pool}``)."""
    from ..feature_store import parse_feature_name

    layers = sorted({layer for layer, pool in map(parse_feature_name, available) if pool == token})
    if n < 1:
        raise ProbeDataError(f"--concat-last must be at least 1, got {n}")
    if len(layers) < n:
        raise ProbeDataError(f"--concat-last {n}: only {len(layers)} layers have a {token!r} feature "
                             f"({', '.join(map(str, layers)) or 'none'}); extract more layers with --pool {token}")
    chosen = layers[-n:]
    mean = f"layer-{chosen[-1]}_mean"
    if mean not in available:
        raise ProbeDataError(f"--concat-last {n}: no feature {mean!r} (the last layer's mean of patch tokens); "
                             f"extract it with --pool mean")
    return FeatureInput(tuple(f"layer-{k}_{token}" for k in chosen) + (mean,))


@dataclass
class ProbeData:
    """Pooled features (name -> (rows, D) array, usually a memmap), labels and where they came from.

    ``row_index`` (when set) maps row i to row ``row_index[i]`` of the arrays: an extraction folder
    with failed images stays memory-mapped and its failed rows are skipped on reading.
    """

    features: dict[str, np.ndarray]
    labels: np.ndarray | None
    source: str
    classes: list[str] | None = None
    feature_files: dict[str, str] = field(default_factory=dict)
    row_index: np.ndarray | None = None

    @property
    def num_rows(self) -> int:
        if self.row_index is not None:
            return int(self.row_index.size)
        return int(next(iter(self.features.values())).shape[0])

    def rows_of(self, name: str, rows) -> np.ndarray:
        """Rows (an index array, a slice or an int) of one feature as stored (no dtype change)."""
        array = self.features[name]
        if self.row_index is None:
            return array[rows]
        return array[self.row_index[rows]]

    def require(self, feature_input: FeatureInput) -> None:
        """Raise a clear error unless every part of ``feature_input`` is here."""
        for part in feature_input.parts:
            if part not in self.features:
                raise ProbeDataError(f"{self.source}: no feature {part!r}; available: "
                                     f"{', '.join(self.features) or 'none'}")

    def dim(self, feature_input: FeatureInput) -> int:
        self.require(feature_input)
        return int(sum(self.features[p].shape[1] for p in feature_input.parts))

    def read(self, names: Sequence[str], rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """float32 copies of the given features (all rows, or the sorted ``rows``)."""
        out = {}
        for name in names:
            block = self.rows_of(name, slice(None) if rows is None else rows)
            out[name] = np.asarray(block, dtype=np.float32)
        return out

    def gather(self, feature_input: FeatureInput, rows: np.ndarray | None = None) -> np.ndarray:
        """The (rows, D) float32 matrix of one feature input (parts concatenated); loads into RAM."""
        parts = self.read(feature_input.parts, rows)
        return np.concatenate([parts[p] for p in feature_input.parts], axis=1)


def _as_labels(labels, where: str, num_rows: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ProbeDataError(f"{where}: labels must be a 1-D array, got shape {labels.shape}")
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ProbeDataError(f"{where}: labels must be whole numbers (found non-integers or NaN)")
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise ProbeDataError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    if labels.shape[0] != num_rows:
        raise ProbeDataError(f"{where}: {labels.shape[0]} labels for {num_rows} feature rows; features and "
                             f"labels must have the same length")
    labels = labels.astype(np.int64)
    if labels.size and labels.min() < 0:
        first = int(np.flatnonzero(labels < 0)[0])
        raise ProbeDataError(f"{where}: negative label {int(labels[first])} at row {first} "
                             f"({int((labels < 0).sum())} rows); every row needs a class index >= 0")
    return labels


def labels_from_paths(paths: Sequence[str], pattern: str, where: str) -> tuple[np.ndarray, list[str]]:
    """Class of each path from the first group of ``pattern`` searched in its file name; classes sorted."""
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ProbeDataError(f"--label-pattern {pattern!r}: not a regular expression ({exc})") from None
    names = []
    for path in paths:
        match = regex.search(Path(path).name)
        if match is None:
            raise ProbeDataError(f"{where}: --label-pattern {pattern!r} does not match the file name of {path}")
        names.append(match.group(1) if regex.groups else match.group(0))
    classes = sorted(set(names))
    index = {c: i for i, c in enumerate(classes)}
    return np.asarray([index[n] for n in names], dtype=np.int64), classes


def load_feature_dir(path: str | Path, names: Sequence[str] | None = None, *, labels=None,
                     label_pattern: str | None = None) -> ProbeData:
    """Open an extraction output (``sail-vision extract --out``) for probing.

    ``names``: the stored features needed (default: every pooled feature). ``labels`` (array or
    ``.npy`` path) replaces the stored labels; ``label_pattern`` derives them from file names.
    Only valid rows (images that were processed) are used.
    """
    from ..feature_store import open_feature_dir

    folder = open_feature_dir(path)
    wanted = list(names) if names is not None else [
        n for n in folder.names if folder.info(n).get("layout", "pooled") == "pooled"]
    features, files = {}, {}
    for name in wanted:
        info = folder.info(name)
        if info.get("layout", "pooled") != "pooled" or len(info.get("shape", [])) != 2:
            raise ProbeDataError(f"{folder.path}: feature {name!r} holds patch tokens ({info.get('layout')} "
                                 f"layout); probes need one vector per image such as layer-K_mean or layer-K_end")
        features[name] = folder.feature(name, valid_only=False)  # stays memory-mapped
        files[name] = str(folder.path / info["file"])
    if not features:
        raise ProbeDataError(f"{folder.path}: no pooled features to probe (found {', '.join(folder.names)})")
    row_index = None if folder.all_valid else np.flatnonzero(folder.valid)
    num_rows = folder.num_valid
    classes = folder.classes
    if labels is not None:
        labels = _as_labels(_load_npy(labels, "labels") if isinstance(labels, (str, Path)) else labels,
                            str(labels) if isinstance(labels, (str, Path)) else f"{folder.path} labels", num_rows)
        classes = None
    elif label_pattern:
        labels, classes = labels_from_paths(folder.paths, label_pattern, str(folder.path))
    else:
        stored = folder.labels
        labels = None if stored is None else _as_labels(stored, str(folder.path / "labels.npy"), num_rows)
    return ProbeData(features, labels, str(folder.path), classes, files, row_index)


def _load_npy(path, what: str, mmap: bool = False) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise ProbeDataError(f"{path}: no such {what} file")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ProbeDataError(f"{path}: not a readable .npy {what} file ({exc})") from None


def load_arrays(features: str | Path | np.ndarray | Mapping[str, str | Path | np.ndarray], labels=None,
                *, name: str | None = None) -> ProbeData:
    """Plain arrays as probe data: ``features`` an (N, D) array or ``.npy`` path (memory-mapped), or a
    mapping of names to those; ``labels`` an (N,) array or ``.npy`` path. A single file's feature is
    named after its file stem (or ``name``)."""
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
        if array.ndim != 2:
            raise ProbeDataError(f"{files.get(key, key)}: features must be an (N, D) array, got shape {array.shape}")
        if array.dtype.kind not in "fiu":
            raise ProbeDataError(f"{files.get(key, key)}: features must be numbers, got dtype {array.dtype}")
        arrays[key] = array
    lengths = {k: a.shape[0] for k, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ProbeDataError(f"feature arrays have different numbers of rows: {lengths}")
    where = ", ".join(source)
    label_array = None
    if labels is not None:
        label_where = str(labels) if isinstance(labels, (str, Path)) else f"labels of {where}"
        raw = _load_npy(labels, "labels") if isinstance(labels, (str, Path)) else labels
        label_array = _as_labels(raw, label_where, next(iter(lengths.values())))
    return ProbeData(arrays, label_array, where, None, files)


def check_finite(data: ProbeData, names: Sequence[str], chunk_rows: int = DEFAULT_CHUNK_ROWS) -> None:
    """Raise if any feature holds NaN or Inf, saying how many values and the first row."""
    for name in names:
        if data.features[name].dtype.kind in "iu":
            continue
        bad_values, first_row = 0, None
        for start in range(0, data.num_rows, chunk_rows):
            block = np.asarray(data.rows_of(name, slice(start, start + chunk_rows)))
            finite = np.isfinite(block)
            if not finite.all():
                bad_values += int(finite.size - finite.sum())
                if first_row is None:
                    first_row = start + int(np.flatnonzero(~finite.all(axis=1))[0])
        if bad_values:
            raise ProbeDataError(
                f"{data.feature_files.get(name, data.source)}: feature {name!r} holds {bad_values} NaN/Inf "
                f"values, first at row {first_row}; re-extract with --save-dtype float32 or drop those rows")


def validate_train_val(train: ProbeData, val: ProbeData | None, inputs: Sequence[FeatureInput],
                       chunk_rows: int = DEFAULT_CHUNK_ROWS) -> int:
    """Check the probe inputs; returns the number of classes (max train label + 1, or len(classes))."""
    for data, role in ((train, "train"), (val, "val")):
        if data is None:
            continue
        if data.labels is None:
            raise ProbeDataError(f"{role} data {data.source} has no labels; extract from class folders or a "
                                 f"labelled list, or pass --{role}-labels / --label-pattern")
        for feature_input in inputs:
            data.require(feature_input)
        check_finite(data, sorted({p for fi in inputs for p in fi.parts}), chunk_rows)
    present = np.unique(train.labels)
    if present.size < 2:
        raise ProbeDataError(f"train data {train.source}: every row has label {int(present[0]) if present.size else '-'}; "
                             f"a probe needs at least two classes")
    num_classes = int(present.max()) + 1
    if train.classes:
        num_classes = max(num_classes, len(train.classes))
    if val is not None:
        for feature_input in inputs:
            if train.dim(feature_input) != val.dim(feature_input):
                raise ProbeDataError(f"feature {feature_input.name!r}: {train.dim(feature_input)} dims in train "
                                     f"({train.source}) but {val.dim(feature_input)} in val ({val.source})")
        unseen = np.setdiff1d(np.unique(val.labels), present)
        if unseen.size:
            raise ProbeDataError(f"val data {val.source}: {unseen.size} classes never seen in train "
                                 f"(e.g. {', '.join(map(str, unseen[:5].tolist()))}); the train and val "
                                 f"folders must share their class numbering")
    return num_classes


def split_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit_rows, holdout_rows), both sorted: a seeded split stratified by class when possible."""
    from sklearn.model_selection import train_test_split

    if not 0 < fraction < 1:
        raise ProbeDataError(f"--holdout-fraction must be between 0 and 1, got {fraction}")
    rows = np.arange(labels.shape[0])
    counts = np.bincount(labels)
    num_holdout = int(round(fraction * rows.size))
    present = int((counts > 0).sum())
    stratify = labels if (counts[counts > 0].min() >= 2 and present <= num_holdout <= rows.size - present) else None
    if num_holdout < 1 or num_holdout >= rows.size:
        raise ProbeDataError(f"--holdout-fraction {fraction} of {rows.size} train rows leaves no rows to "
                             f"select on or to train on")
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
        block = np.asarray(data.rows_of(name, rows[start:start + chunk_rows]), dtype=np.float64)
        total += block.sum(0)
        square += np.square(block).sum(0)
    mean = total / max(rows.size, 1)
    var = np.maximum(square / max(rows.size, 1) - mean ** 2, 0.0)
    std = np.sqrt(var)
    std[std < 1e-6 * max(float(std.max(initial=0.0)), 1e-12)] = 1.0  # constant dimensions stay as they are
    return mean.astype(np.float32), std.astype(np.float32)


def input_stats(data: ProbeData, feature_input: FeatureInput, rows: np.ndarray | None = None,
                chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of a feature input: its parts' statistics, concatenated."""
    stats = [feature_stats(data, part, rows, chunk_rows) for part in feature_input.parts]
    return np.concatenate([s[0] for s in stats]), np.concatenate([s[1] for s in stats])


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


def stream_batches(data: ProbeData, names: Sequence[str], rows: np.ndarray, batch_size: int,
                   rng: np.random.Generator, *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                   block_rows: int = DEFAULT_BLOCK_ROWS, drop_last: bool = False
                   ) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
    """Shuffled mini-batches ({name: (B, D) float32}, labels) of one epoch, reading one chunk at a time."""
    for chunk in shuffled_chunks(rows, rng, chunk_rows, block_rows):
        arrays = data.read(names, chunk)
        labels = data.labels[chunk]
        order = rng.permutation(chunk.size)
        for start in range(0, chunk.size, batch_size):
            pick = order[start:start + batch_size]
            if drop_last and pick.size < batch_size:
                break
            yield {n: a[pick] for n, a in arrays.items()}, labels[pick]


def ordered_chunks(data: ProbeData, names: Sequence[str], rows: np.ndarray | None = None,
                   chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
    """(row indices, {name: float32 block}) in file order, for evaluation and statistics."""
    rows = np.arange(data.num_rows) if rows is None else rows
    for start in range(0, rows.size, chunk_rows):
        chunk = rows[start:start + chunk_rows]
        yield chunk, data.read(names, chunk)
