"""Applying a saved head to new features (``sail-vision probe --predict``), one output row per input row.

Before scoring, the features are checked against the head (:meth:`LoadedProbe.check_features`: the
same checkpoint, layers, pools, preprocessing and widths) and refused if any value is NaN or Inf.
Every row of the feature folder gets a line of ``predictions.csv``, failed images included (status
``failed`` with the extraction's reason); the arrays follow the folder's rows too.

``predictions.csv`` columns: ``row`` (index in the folder, = line of its ``paths.txt``), ``path``,
``status`` (``ok`` / ``failed``), ``error``, ``label`` (the true class name when the features have
labels, else empty), then ``class_1, prob_1, ..., class_K, prob_K``: the K (``--top-k``) best
classes and their probabilities (softmax of the logits; for k-NN the normalised votes).
CSV (written by Python's ``csv`` module, so commas and quotes in paths are quoted) opens in any
spreadsheet and in ``pandas.read_csv``.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import ProbeData, check_finite
from .defaults import DEFAULT_TOP_K
from .errors import ProbeDataError
from .results import LoadedProbe, claim_output, save_npy, write_json

CSV_FILE = "predictions.csv"
PREDICTIONS_FILE = "predictions.npy"
SCORES_FILE = "scores.npy"
SUMMARY_FILE = "predictions.json"
#: Every file ``--predict`` writes (the only ones its ``--overwrite`` removes); the summary is written last.
PREDICT_FILES = (CSV_FILE, PREDICTIONS_FILE, SCORES_FILE, SUMMARY_FILE)


@dataclass
class PredictionResult:
    """What a prediction run wrote and found."""

    summary: dict
    predictions: np.ndarray = field(repr=False)
    scores: np.ndarray = field(repr=False)
    out: Path | None = None


def check_predictable(probe: LoadedProbe, data: ProbeData) -> None:
    """Everything ``--predict`` refuses before scoring: another provenance or width, NaN/Inf values."""
    probe.check_features(data)
    check_finite(data, list(probe.feature_input.parts))


def predict_features(probe: LoadedProbe, data: ProbeData, out: str | Path | None, *, top_k: int = DEFAULT_TOP_K,
            overwrite: bool = False) -> PredictionResult:
    """Score every usable row of ``data`` with ``probe`` and (when ``out`` is given) write the files above."""
    if top_k < 1:
        raise ProbeDataError(f"--top-k must be >= 1, got {top_k}")
    check_predictable(probe, data)
    if out is None:
        return _predict(probe, data, top_k)
    with claim_output(Path(out), result_file=SUMMARY_FILE, own_files=PREDICT_FILES, overwrite=overwrite,
                      what="prediction result") as folder:
        result = _predict(probe, data, top_k)
        save_npy(folder / PREDICTIONS_FILE, result.predictions)
        save_npy(folder / SCORES_FILE, result.scores)
        _write_csv(folder / CSV_FILE, probe, data, result, top_k)
        result.summary["files"] = {"csv": CSV_FILE, "predictions": PREDICTIONS_FILE, "scores": SCORES_FILE}
        write_json(folder / SUMMARY_FILE, result.summary)
        result.out = folder
    return result


def _predict(probe: LoadedProbe, data: ProbeData, top_k: int) -> PredictionResult:
    scores = probe.scores(data)
    total = data.total_items
    items = data.item_of_row
    all_scores = np.full((total, probe.num_classes), np.nan, dtype=np.float32)
    all_scores[items] = scores
    predictions = np.full(total, -1, dtype=np.int64)
    predictions[items] = scores.argmax(1) if scores.size else []
    summary = {"head": probe.meta.get("folder"), "method": probe.method, "feature": probe.feature_input.name,
               "features": data.source, "rows": int(total), "predicted": int(items.size),
               "failed": int(total - items.size), "top_k": int(min(top_k, probe.num_classes)),
               "top1": None, "top5": None, "accuracy_note": None}
    if data.labels is not None:
        try:
            labels = probe.aligned_labels(data)
        except ProbeDataError as exc:
            summary["accuracy_note"] = f"accuracy not computed: {exc}"
        else:
            from .metrics import topk_accuracy

            accuracy = topk_accuracy(scores, labels)
            summary["top1"], summary["top5"] = accuracy["top1"], accuracy["top5"]
    return PredictionResult(summary, predictions, all_scores)


def _write_csv(path: Path, probe: LoadedProbe, data: ProbeData, result: PredictionResult, top_k: int) -> None:
    """Write ``predictions.csv`` row by row into a temporary file, then move it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as handle:
        _write_rows(csv.writer(handle, lineterminator="\n"), probe, data, result, top_k)
    os.replace(tmp, path)


def _write_rows(writer, probe: LoadedProbe, data: ProbeData, result: PredictionResult, top_k: int) -> None:
    k = min(top_k, probe.num_classes)
    writer.writerow(["row", "path", "status", "error", "label"]
                    + [f"{name}_{i}" for i in range(1, k + 1) for name in ("class", "prob")])
    probabilities = np.full_like(result.scores, np.nan)
    usable = result.predictions >= 0
    probabilities[usable] = probe.probabilities(result.scores[usable])
    ranked = np.argsort(-np.nan_to_num(probabilities, nan=-1.0), axis=1, kind="stable")[:, :k]
    labels = np.full(data.total_items, -1, dtype=np.int64)
    if data.labels is not None:
        labels[data.item_of_row] = data.labels
    paths = data.paths or [""] * data.total_items
    for item in range(data.total_items):
        path = paths[item] if item < len(paths) else ""
        label = data.class_name(int(labels[item])) if labels[item] >= 0 else ""
        if not usable[item]:
            writer.writerow([item, path, "failed", data.failures.get(item, "image not processed"), label]
                            + [""] * (2 * k))
            continue
        cells = []
        for index in ranked[item]:
            cells += [probe.class_name(int(index)), f"{probabilities[item, index]:.6g}"]
        writer.writerow([item, path, "ok", "", label] + cells)
