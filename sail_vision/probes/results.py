"""What a probe run leaves behind, the output folder's safety, and the saved best head reloaded.

An output folder holds ``grid.jsonl`` (one JSON object per grid point), ``head.safetensors`` +
``head.json`` (the chosen head and the provenance of its features), ``val_predictions.npy``,
``accuracy.png``, for a layer sweep ``layers.png``, and ``summary.json``, written last (a folder
without it holds an interrupted run). One process writes a folder at a time (``folder_lock.hold_folder``), and only the files named here are ever replaced or removed.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from ..folder_lock import hold_folder
from .data import ProbeData
from .labels import align_classes
from .errors import ProbeDataError
from .inputs import FeatureInput
from .methods import Head, load_head, selection_key
from .metrics import topk_accuracy
from .provenance import mismatches

HEAD_FORMAT = "sail-vision-probe-head"
#: Version 3: head.json and head.safetensors bind each other (``head_json_sha256`` in the tensors' metadata,
#: ``tensor_shapes`` in head.json).
HEAD_VERSION = 3
GRID_FILE = "grid.jsonl"
SUMMARY_FILE = "summary.json"
HEAD_TENSORS_FILE = "head.safetensors"
HEAD_JSON_FILE = "head.json"
PREDICTIONS_FILE = "val_predictions.npy"
PLOT_FILE = "accuracy.png"
LAYERS_PLOT_FILE = "layers.png"
FEW_SHOT_PLOT_FILE = "few_shot.png"
#: Every file a probe run writes (and the only ones ``--overwrite`` removes).
RUN_FILES = (GRID_FILE, SUMMARY_FILE, HEAD_TENSORS_FILE, HEAD_JSON_FILE, PREDICTIONS_FILE, PLOT_FILE, LAYERS_PLOT_FILE,
             FEW_SHOT_PLOT_FILE)


def write_text(path: Path, text: str) -> None:
    """Atomically write a UTF-8 text file (readers never see half of it)."""
    from ..feature_store import atomic_write_text

    atomic_write_text(path, text)


def write_json_lines(path: Path, records: Sequence[dict]) -> None:
    write_text(path, "".join(json.dumps(r, sort_keys=False) + "\n" for r in records))


def write_json(path: Path, payload: dict) -> None:
    write_text(path, json.dumps(payload, indent=2) + "\n")


def save_npy(path: Path, array: np.ndarray) -> None:
    from ..feature_store import atomic_save_npy

    atomic_save_npy(path, array)


# ---------------------------------------------------------------------------------- tables
def _pct(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_table(records: Sequence[dict], chosen: str, summary: dict, metrics: Sequence[str] = ("top1", "top5")
                 ) -> str:
    """A plain-text table of every grid point's selection metrics, the chosen one starred."""
    width = max([len(r["name"]) for r in records] + [4])
    lines = [f"{'':2}{'name':<{width}}" + "".join(f"  {'select ' + m:>11}" for m in metrics)]
    for rec in records:
        mark = "* " if rec["name"] == chosen else "  "
        lines.append(f"{mark}{rec['name']:<{width}}" + "".join(f"  {_pct(rec.get(f'holdout_{m}')):>11}"
                                                               for m in metrics))
    lines.append(f"chosen: {chosen}")
    val = "  ".join(f"{m} {_pct(summary.get(m))}" for m in metrics)
    lines.append(f"val: {val}  ({summary.get('num_val')} rows)")
    return "\n".join(lines)


def layer_summary(records: Sequence[dict], metrics: Sequence[str] = ("top1", "top5")) -> list[dict]:
    """Best grid point of each single stored ``layer-K_pool`` input, by its held-out metrics, sorted by
    pool then layer. Empty unless at least two layers were probed with held-out scores."""
    best: dict[str, dict] = {}
    for order, rec in enumerate(records):
        feature_input = FeatureInput(tuple(rec["parts"]))
        if feature_input.layer is None or rec.get(f"holdout_{metrics[0]}") is None:
            continue
        current = best.get(feature_input.name)
        if current is None or selection_key(rec, metrics) > selection_key(current, metrics):
            layer, pool = feature_input.layer
            best[feature_input.name] = {"feature": feature_input.name, "layer": layer, "pool": pool,
                                        "grid_point": rec["name"], "order": order,
                                        **{f"holdout_{m}": rec[f"holdout_{m}"] for m in metrics}}
    rows = sorted(best.values(), key=lambda r: (r["pool"], r["layer"]))
    return rows if len({r["layer"] for r in rows}) >= 2 else []


def best_layer(rows: Sequence[dict], metrics: Sequence[str] = ("top1", "top5")) -> dict | None:
    """The layer-summary row with the best held-out metrics (:func:`~.methods.selection_key`); on ties the one
    whose grid point comes first (the same rule that chooses the head, so a single-layer chosen head is also
    the best layer)."""
    if not rows:
        return None
    return max(sorted(rows, key=lambda r: r["order"]), key=lambda r: selection_key(r, metrics))


def format_layer_table(rows: Sequence[dict], metrics: Sequence[str] = ("top1", "top5")) -> str:
    """Held-out accuracy of each layer (best hyper-parameters), the best layer starred."""
    top = best_layer(rows, metrics)
    width = max(len(r["feature"]) for r in rows)
    lines = [f"{'':2}{'layer':>5}  {'feature':<{width}}" + "".join(f"  {'select ' + m:>11}" for m in metrics)
             + "  best grid point"]
    for r in rows:
        mark = "* " if r is top else "  "
        lines.append(f"{mark}{r['layer']:>5}  {r['feature']:<{width}}"
                     + "".join(f"  {_pct(r[f'holdout_{m}']):>11}" for m in metrics) + f"  {r['grid_point']}")
    lines.append(f"best layer: {top['feature']} (layer {top['layer']}, held-out {metrics[0]} "
                 f"{_pct(top[f'holdout_{metrics[0]}'])})")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------- output folder
@contextmanager
def claim_output(out: Path, *, result_file: str, own_files: Sequence[str], overwrite: bool,
                 what: str = "probe result") -> Iterator[Path]:
    """Hold ``out`` for one writer (:func:`~sail_vision.folder_lock.hold_folder`: a second process is
    refused, naming the holder), refuse when ``result_file`` is already there (unless ``overwrite``),
    and remove this command's own leftover files (``own_files``) before new ones are written. Nothing
    else in the folder is touched."""
    if Path(out).exists() and not Path(out).is_dir():
        raise ProbeDataError(f"--out {out}: exists and is not a folder")
    with hold_folder(out, f"sail-vision probe ({what})") as folder:
        if (folder / result_file).exists() and not overwrite:
            raise ProbeDataError(f"--out {folder}: already holds a {what} ({result_file}); pass --overwrite to "
                                 f"replace it or choose another folder")
        for name in own_files:
            (folder / name).unlink(missing_ok=True)
        yield folder


# ---------------------------------------------------------------------------------- saved heads
def head_json_digest(meta: Mapping) -> str:
    """sha256 of ``head.json``'s content (keys sorted, compact), the digest head.safetensors records."""
    import hashlib

    text = json.dumps(meta, sort_keys=True, separators=(",", ":"), allow_nan=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def save_head(out: Path, meta: dict, tensors: Mapping[str, np.ndarray]) -> None:
    """Write ``head.safetensors`` (when there are tensors) and ``head.json``, bound to each other: head.json
    lists the tensors' shapes and the safetensors metadata holds the digest of head.json's content, so a
    head.json edited by hand (its classes reordered, say) or paired with other tensors is refused on load."""
    from safetensors.numpy import save_file

    meta = json.loads(json.dumps({"format": HEAD_FORMAT, "version": HEAD_VERSION, **meta}))  # as head.json reads back
    if tensors:
        stored = {k: np.ascontiguousarray(v) for k, v in tensors.items()}  # 0-d arrays are stored as (1,)
        meta["tensors"] = HEAD_TENSORS_FILE
        meta["tensor_shapes"] = {k: list(v.shape) for k, v in stored.items()}
        tmp = out / f".{HEAD_TENSORS_FILE}.tmp"
        save_file(stored, str(tmp),
                  metadata={"format": HEAD_FORMAT, "method": meta["method"], "feature": meta["feature"],
                            "head_json_sha256": head_json_digest(meta)})
        tmp.replace(out / HEAD_TENSORS_FILE)
    write_json(out / HEAD_JSON_FILE, meta)


def check_head_binding(meta: Mapping, tensors: Mapping[str, np.ndarray], recorded: str | None, meta_file: Path,
                       tensor_file: Path) -> None:
    """Refuse a head.json and head.safetensors that were not written together (see :func:`save_head`)."""
    redo = "re-run `sail-vision probe`, or restore the files of that run"
    if recorded != head_json_digest(meta):
        raise ProbeDataError(f"{meta_file}: does not match {tensor_file.name} (its content differs from what the "
                             f"run wrote: edited by hand, or copied from another run); {redo}")
    shapes = {k: list(np.shape(v)) for k, v in tensors.items()}
    if shapes != meta.get("tensor_shapes"):
        raise ProbeDataError(f"{tensor_file}: tensor shapes {shapes} differ from those {meta_file.name} lists "
                             f"{meta.get('tensor_shapes')}; {redo}")


def _as_probe_data(features, feature_input: FeatureInput) -> ProbeData:
    if isinstance(features, ProbeData):
        return features
    if isinstance(features, dict):
        return ProbeData(dict(features), None, "<arrays>")
    array = np.asarray(features)
    if len(feature_input.parts) != 1:
        raise ProbeDataError(f"this head reads {feature_input.name!r}; pass a dict of those features, not one array")
    return ProbeData({feature_input.parts[0]: array}, None, "<array>")


class LoadedProbe:
    """A saved best head: ``scores(features)`` -> (N, C), ``predict(features)`` -> (N,) class indices,
    ``check_features(data)`` refuses features unlike those it was trained on."""

    def __init__(self, meta: dict, head: Head):
        self.meta = meta
        self.head = head

    @property
    def method(self) -> str:
        return self.meta["method"]

    @property
    def feature_input(self) -> FeatureInput:
        return FeatureInput(tuple(self.meta["parts"]))

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    @property
    def classes(self) -> list[str] | None:
        return self.meta.get("classes")

    def class_name(self, index: int) -> str:
        return self.classes[index] if self.classes else str(index)

    def check_features(self, data: ProbeData) -> None:
        """Refuse ``data`` unless its features come from the same checkpoint, layers, pools, preprocessing
        and widths as the head's training features (see :mod:`.provenance`)."""
        data.require(self.feature_input)
        found = mismatches(self.meta["provenance"], data.input_provenance(self.feature_input))
        if found:
            raise ProbeDataError(f"{data.source}: these features do not match the ones the head in "
                                 f"{self.meta.get('folder', 'this probe')} was trained on: {'; '.join(found)}")

    def _check_dim(self, data: ProbeData) -> None:
        expected = int(self.meta["dim"])
        if data.dim(self.feature_input) != expected:
            raise ProbeDataError(f"{data.source}: {self.feature_input.name!r} has {data.dim(self.feature_input)} "
                                 f"dims but this head was trained on {expected}")

    def scores(self, features, rows: np.ndarray | None = None) -> np.ndarray:
        """(N, C) class scores (logits, or k-NN votes) for a ProbeData, a {name: array} dict or an array.
        Arrays are not checked against the head's provenance (use :meth:`check_features` for folders)."""
        data = _as_probe_data(features, self.feature_input)
        data.require(self.feature_input)
        self._check_dim(data)
        return self.head.scores(data, rows)

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        return self.head.probabilities(scores)

    def predict(self, features) -> np.ndarray:
        """(N,) predicted class indices (names: ``probe.classes``)."""
        return self.scores(features).argmax(axis=1).astype(np.int64)

    def evaluate(self, data: ProbeData) -> tuple[float, float, np.ndarray]:
        """(top1, top5 in percent, predictions) on labelled data, its classes matched to the head's by name."""
        if data.labels is None:
            raise ProbeDataError(f"{data.source} has no labels to evaluate against")
        labels = self.aligned_labels(data)
        scores = self.scores(data)
        accuracy = topk_accuracy(scores, labels)
        return accuracy["top1"], accuracy["top5"], scores.argmax(1).astype(np.int64)

    def aligned_labels(self, data: ProbeData) -> np.ndarray:
        """``data``'s labels as the head's class indices (matched by name; refused when a class is unknown)."""
        trained = np.asarray(self.meta.get("trained_labels", range(self.num_classes)), dtype=np.int64)
        reference = ProbeData({}, trained, self.meta.get("train", "the training data"), self.classes)
        return align_classes(reference, data).labels


def load_probe(path: str | Path, *, device: str = "cpu", bank: ProbeData | None = None) -> LoadedProbe:
    """Load the best head saved by ``sail-vision probe --out PATH`` (the folder or its head.json)."""
    from safetensors import safe_open
    from safetensors.numpy import load_file

    path = Path(path)
    folder = path.parent if path.name == HEAD_JSON_FILE else path
    meta_file = folder / HEAD_JSON_FILE
    if not meta_file.is_file():
        mmengine = " (a .pth from tools/train.py is evaluated with tools/test.py)" if any(folder.glob("*.pth")) else ""
        raise ProbeDataError(f"{folder}: no {HEAD_JSON_FILE}; pass the --out folder of a finished `sail-vision "
                             f"probe`{mmengine}")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProbeDataError(f"{meta_file}: malformed JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != HEAD_FORMAT:
        raise ProbeDataError(f"{meta_file}: not a sail-vision probe head (format {meta.get('format')!r})"
                             if isinstance(meta, dict) else f"{meta_file}: not a sail-vision probe head")
    if meta.get("version") != HEAD_VERSION:
        raise ProbeDataError(f"{meta_file}: head format version {meta.get('version')!r}; this sail-vision reads "
                             f"version {HEAD_VERSION} (older heads record no feature provenance or binding of head.json to its tensors): re-run "
                             f"`sail-vision probe` to produce a new head")
    tensors = {}
    if meta.get("tensors"):
        name = meta["tensors"]
        if not isinstance(name, str) or Path(name).name != name or not name.endswith(".safetensors"):
            raise ProbeDataError(f"{meta_file}: tensors {name!r} is not a .safetensors file beside head.json; "
                                 f"heads are only read from safetensors (never pickles)")
        tensor_file = folder / name
        if not tensor_file.is_file():
            raise ProbeDataError(f"{tensor_file}: missing; the probe output is incomplete")
        try:
            tensors = load_file(str(tensor_file))
            with safe_open(str(tensor_file), framework="numpy") as opened:
                recorded = (opened.metadata() or {}).get("head_json_sha256")
        except Exception as exc:  # safetensors raises its own error types for damaged files
            raise ProbeDataError(f"{tensor_file}: not a readable safetensors file ({exc}); re-run `sail-vision "
                                 f"probe`") from None
        check_head_binding(meta, tensors, recorded, meta_file, tensor_file)
    meta["folder"] = str(folder)
    return LoadedProbe(meta, load_head(meta, tensors, device=device, bank=bank))
