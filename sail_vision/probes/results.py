"""What a probe run leaves behind, and loading the saved best head for prediction.

An output folder holds ``grid.jsonl`` (one JSON object per grid point), ``summary.json``,
``head.safetensors`` + ``head.json`` (the chosen head), ``val_predictions.npy`` and
``accuracy.png``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data import DEFAULT_CHUNK_ROWS, FeatureInput, ProbeData, ProbeDataError, ordered_chunks
from .metrics import accuracy_percent, topk_correct

HEAD_FORMAT = "sail-vision-probe-head"
HEAD_VERSION = 1
GRID_FILE = "grid.jsonl"
SUMMARY_FILE = "summary.json"
HEAD_TENSORS_FILE = "head.safetensors"
HEAD_JSON_FILE = "head.json"
PREDICTIONS_FILE = "val_predictions.npy"
PLOT_FILE = "accuracy.png"
#: A k-NN bank up to this size is copied into head.safetensors; larger ones are referenced.
MAX_SAVED_BANK_BYTES = 2 << 30


def write_json_lines(path: Path, records: Sequence[dict]) -> None:
    from ..feature_store import atomic_write_text

    atomic_write_text(path, "".join(json.dumps(r, sort_keys=False) + "\n" for r in records))


def write_json(path: Path, payload: dict) -> None:
    from ..feature_store import atomic_write_text

    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def format_table(records: Sequence[dict], chosen: str, summary: dict) -> str:
    """A plain-text table of every grid point's selection accuracy, the chosen one starred."""
    width = max([len(r["name"]) for r in records] + [4])
    lines = [f"{'':2}{'name':<{width}}  {'select top1':>11}  {'select top5':>11}"]
    for record in records:
        top1, top5 = record.get("holdout_top1"), record.get("holdout_top5")
        mark = "* " if record["name"] == chosen else "  "
        lines.append(f"{mark}{record['name']:<{width}}  {_pct(top1):>11}  {_pct(top5):>11}")
    lines.append(f"chosen: {chosen}")
    lines.append(f"val: top1 {_pct(summary.get('top1'))}  top5 {_pct(summary.get('top5'))}  "
                 f"({summary.get('num_val')} rows)")
    return "\n".join(lines)


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _data_block(arrays: dict[str, np.ndarray], feature_input: FeatureInput) -> np.ndarray:
    parts = [arrays[p] for p in feature_input.parts]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def _as_probe_data(features, feature_input: FeatureInput) -> ProbeData:
    if isinstance(features, ProbeData):
        return features
    if isinstance(features, dict):
        return ProbeData(dict(features), None, "<arrays>")
    array = np.asarray(features)
    if len(feature_input.parts) != 1:
        raise ProbeDataError(f"this head reads {feature_input.name!r}; pass a dict of those features, not one array")
    return ProbeData({feature_input.parts[0]: array}, None, "<array>")


@dataclass
class LoadedProbe:
    """A saved best head: ``scores(features)`` -> (N, C) and ``predict(features)`` -> (N,) labels."""

    meta: dict
    tensors: dict[str, torch.Tensor]
    bank: ProbeData | None = None

    @property
    def method(self) -> str:
        return self.meta["method"]

    @property
    def feature_input(self) -> FeatureInput:
        return FeatureInput(tuple(self.meta["parts"]))

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    def _check_dim(self, data: ProbeData) -> None:
        expected = int(self.meta["dim"])
        if data.dim(self.feature_input) != expected:
            raise ProbeDataError(f"{data.source}: {self.feature_input.name!r} has {data.dim(self.feature_input)} "
                                 f"dims but this head was trained on {expected}")

    def scores(self, features, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
        """(N, C) class scores (logits, or k-NN votes) for a ProbeData, a {name: array} dict or an array."""
        data = _as_probe_data(features, self.feature_input)
        data.require(self.feature_input)
        self._check_dim(data)
        if self.method == "knn":
            from .knn import predict_knn

            hp = self.meta["hyperparameters"]
            return predict_knn(self._bank(), self.feature_input, data, int(hp["k"]), self.num_classes,
                               float(hp["temperature"]), chunk_rows).numpy()
        outputs = []
        with torch.no_grad():
            for _, arrays in ordered_chunks(data, self.feature_input.parts, None, chunk_rows):
                outputs.append(self.logits(torch.from_numpy(_data_block(arrays, self.feature_input))).numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, self.num_classes), np.float32)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) logits of a linear head for raw (N, D) features (standardised here if it was trained so)."""
        if "mean" in self.tensors:
            x = (x - self.tensors["mean"]) / self.tensors["std"]
        return x @ self.tensors["weight"].t() + self.tensors["bias"]

    def predict(self, features, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> np.ndarray:
        """(N,) predicted labels."""
        return self.scores(features, chunk_rows).argmax(axis=1).astype(np.int64)

    def evaluate(self, data: ProbeData, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> tuple[float, float, np.ndarray]:
        """(top1, top5 in percent, predictions) on labelled data."""
        if data.labels is None:
            raise ProbeDataError(f"{data.source} has no labels to evaluate against")
        scores = torch.from_numpy(self.scores(data, chunk_rows))
        hits = topk_correct(scores, torch.from_numpy(data.labels))
        total = int(data.labels.shape[0])
        return (accuracy_percent(hits[1], total), accuracy_percent(hits[5], total),
                scores.argmax(1).numpy().astype(np.int64))

    def _bank(self) -> ProbeData:
        if self.bank is None:
            reference = self.meta.get("bank") or {}
            if reference.get("feature_dir"):
                from .data import load_feature_dir

                self.bank = load_feature_dir(reference["feature_dir"], self.feature_input.parts,
                                             label_pattern=reference.get("label_pattern"))
            else:
                raise ProbeDataError("this k-NN head has no saved bank and no feature folder to reload it from")
        return self.bank


def save_head(out: Path, meta: dict, tensors: dict[str, np.ndarray]) -> None:
    """Write ``head.safetensors`` (when there are tensors) and ``head.json``."""
    from safetensors.numpy import save_file

    meta = {"format": HEAD_FORMAT, "version": HEAD_VERSION, **meta}
    if tensors:
        tmp = out / f".{HEAD_TENSORS_FILE}.tmp"
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp),
                  metadata={"format": HEAD_FORMAT, "method": meta["method"], "feature": meta["feature"]})
        tmp.replace(out / HEAD_TENSORS_FILE)
        meta["tensors"] = HEAD_TENSORS_FILE
    write_json(out / HEAD_JSON_FILE, meta)


def load_probe(path: str | Path) -> LoadedProbe:
    """Load the best head saved by ``sail-vision probe --out PATH`` (the folder or its head.json)."""
    from safetensors.numpy import load_file

    path = Path(path)
    folder = path.parent if path.name == HEAD_JSON_FILE else path
    meta_file = folder / HEAD_JSON_FILE
    if not meta_file.is_file():
        raise ProbeDataError(f"{folder}: no {HEAD_JSON_FILE}; pass the --out folder of a finished `sail-vision probe`")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ProbeDataError(f"{meta_file}: malformed JSON ({exc})") from None
    if meta.get("format") != HEAD_FORMAT or meta.get("version") != HEAD_VERSION:
        raise ProbeDataError(f"{meta_file}: not a sail-vision probe head (format {meta.get('format')!r}, "
                             f"version {meta.get('version')!r})")
    tensors = {}
    if meta.get("tensors"):
        tensor_file = folder / meta["tensors"]
        if not tensor_file.is_file():
            raise ProbeDataError(f"{tensor_file}: missing; the probe output is incomplete")
        tensors = {k: torch.from_numpy(v) for k, v in load_file(str(tensor_file)).items()}
    bank = None
    if meta["method"] == "knn" and "bank" in tensors:
        bank = ProbeData({p: a for p, a in _split_bank(tensors["bank"].numpy(), meta).items()},
                         tensors["bank_labels"].numpy().astype(np.int64), str(folder))
    return LoadedProbe(meta, tensors, bank)


def _split_bank(bank: np.ndarray, meta: dict) -> dict[str, np.ndarray]:
    """The saved k-NN bank is the concatenated input; split it back into its parts."""
    dims = meta["part_dims"]
    edges = np.cumsum([0] + list(dims))
    return {p: bank[:, edges[i]:edges[i + 1]] for i, p in enumerate(meta["parts"])}
