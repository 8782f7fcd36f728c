"""Linear segmentation probes on cached patch features: DINOv2's linear head, a grid trained in one pass.

The head is DINOv2's (and :class:`sail_vision.mmseg.heads.SAILLinearHead`'s): BatchNorm over the
channels, then a 1x1 conv, over one layer's patch map (h, w, D) or the channel concatenation of
several layers (``--features layer-29_patch+layer-30_patch+...``). Its logits (C, h, w) are upsampled
bilinearly (``align_corners=False``, as mmseg's ``resize``) to the mask size (H, W) = (h*p, w*p) and
trained with cross-entropy ignoring 255 (averaged over the non-ignored pixels of a batch).

The normalisation is the BatchNorm in eval mode with fixed statistics: the mean and variance of every
channel over all patches of the training images, computed once (streamed) before training, exactly
like the classification probes' standardisation. A trainable BN affine in front of a linear layer
changes nothing a linear layer cannot represent, so each head trains only the 1x1 conv (weight
(D, C), bias (C,)). Every (lr, weight decay) head of a feature input lives in one stacked weight
(:class:`~.linear.HeadStack`, whose SGD / AdamW update and cosine schedule are reused): each batch's
features are read once and multiplied once for all heads; only the upsampling, which is per head,
is done in groups of heads bounded by ``max_logits``. Every head sees the same batches.

Selection is by mIoU on a seeded held-out part of train's images; the chosen point is refit on all
of train (unless ``refit=False``) and evaluated once on val. Metrics are mmseg's ``IoUMetric``:
intersect / union / prediction / label histograms summed over the whole set, per-class IoU and
accuracy (NaN for classes absent from both prediction and ground truth), mIoU / mAcc as their
nanmean, aAcc over all non-ignored pixels (percent, not rounded; mmseg rounds to 2 decimals).

The chosen head is written as ``head.safetensors`` + ``head.json`` and as an mmseg checkpoint
(``mmseg_head.pth``: ``decode_head.bn.*`` and ``decode_head.conv_seg.*``, readable with
``torch.load(weights_only=True)``) that ``tools/test.py CONFIG mmseg_head.pth`` runs with the backbone.

Modules: :mod:`.seg_data` (images' patch maps and masks, batched by size), :mod:`.seg_heads` (the head
grids and the chosen head), :mod:`.seg_train` (training and evaluating a grid), :mod:`.seg_metrics`
(mmseg's arithmetic), :mod:`.seg_export` (the mmseg checkpoint and pictures); this module runs them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .data import split_holdout
from .errors import ProbeDataError
from .inputs import FeatureInput
from .linear import grid_point_name
from .methods import record
from .results import (GRID_FILE, HEAD_JSON_FILE, HEAD_TENSORS_FILE, PLOT_FILE, SUMMARY_FILE, claim_output,
                      format_table, save_head, write_json, write_json_lines, write_text)
from .seg_data import SegmentationData, check_train_val
from .seg_export import (export_mmseg_checkpoint, mmseg_head_settings, plot_confusion, plot_predictions,
                         train_checkpoint, train_norm)
from .seg_heads import SegHeadStack, SegmentationConfig, SegmentationHead
from .seg_metrics import (METRICS, confusion_csv, finite_or_none, metrics_arithmetic, per_class_table,
                          segmentation_metrics)
from .seg_train import evaluate_seg_stacks, train_seg_grid

METHOD = "segmentation-linear"
PER_CLASS_FILE = "per_class.csv"
PREDICTIONS_PLOT_FILE = "predictions.png"
MMSEG_CHECKPOINT_FILE = "mmseg_head.pth"
CONFUSION_FILE = "confusion.csv"
CONFUSION_PLOT_FILE = "confusion.png"
#: Every file a segmentation probe run writes (and the only ones ``--overwrite`` removes).
SEG_RUN_FILES = (GRID_FILE, SUMMARY_FILE, HEAD_TENSORS_FILE, HEAD_JSON_FILE, PLOT_FILE, PER_CLASS_FILE,
                 PREDICTIONS_PLOT_FILE, MMSEG_CHECKPOINT_FILE, CONFUSION_FILE, CONFUSION_PLOT_FILE)


# ---------------------------------------------------------------------------------- the run
@dataclass
class SegmentationResult:
    summary: dict
    records: list[dict]
    head: SegmentationHead
    out: Path | None
    table: str = ""
    per_class: str = ""


def _scores(hist: np.ndarray) -> dict[str, float | None]:
    found = segmentation_metrics(hist)
    return {m: finite_or_none(found[m]) for m in METRICS}


def _select_key(rec: Mapping) -> tuple:
    return tuple(-math.inf if rec[f"holdout_{m}"] is None else rec[f"holdout_{m}"] for m in METRICS)


def run_segmentation_probe(train: SegmentationData, val: SegmentationData | None, inputs: Sequence[FeatureInput],
                           out: str | Path | None, config: SegmentationConfig | None = None, *,
                           holdout_fraction: float = 0.1, seed: int = 0, refit: bool = True,
                           overwrite: bool = False, progress: bool = True, verbose: bool = True,
                           protocol: dict | None = None) -> SegmentationResult:
    """Train the grid on train's images minus a seeded held-out ``holdout_fraction`` (no hold-out with a
    single grid point), choose by held-out mIoU (then mAcc, aAcc), refit on all train (``refit``),
    evaluate once on ``val`` and, with ``out``, write the results folder."""
    from dataclasses import replace

    started = time.monotonic()
    config = replace(config or SegmentationConfig(), seed=seed)
    config.check()
    inputs = list(inputs)
    if not inputs:
        raise ProbeDataError("no feature inputs to probe")
    grid_size = len(inputs) * len(config.grid)
    if grid_size > 1 and not 0 < holdout_fraction < 1:
        raise ProbeDataError(f"--holdout-fraction must be between 0 and 1, got {holdout_fraction}")
    check_train_val(train, val, inputs)
    if out is None:
        return _run(train, val, inputs, None, config, grid_size, holdout_fraction, seed, refit, progress, verbose,
                    started, protocol)
    with claim_output(Path(out).expanduser(), result_file=SUMMARY_FILE, own_files=SEG_RUN_FILES,
                      overwrite=overwrite, what="segmentation probe result") as folder:
        return _run(train, val, inputs, folder, config, grid_size, holdout_fraction, seed, refit, progress, verbose,
                    started, protocol)


def _run(train, val, inputs, out, config, grid_size, holdout_fraction, seed, refit, progress, verbose, started,
         protocol=None):
    all_rows = np.arange(train.num_images)
    if grid_size > 1:  # split source images, not rows: an image's views stay on one side
        groups = train.image_groups()
        fit_groups, held_groups = split_holdout(np.zeros(int(groups.max()) + 1, np.int64), holdout_fraction, seed)
        fit_rows, held_rows = np.flatnonzero(np.isin(groups, fit_groups)), np.flatnonzero(np.isin(groups, held_groups))
    else:
        fit_rows, held_rows = all_rows, None
    trained = train_seg_grid(train, inputs, fit_rows, config, progress=progress)
    scores = {}
    if held_rows is not None:
        held = evaluate_seg_stacks(trained.eval_stacks(config), inputs, train, held_rows, config)
        scores = {name: [_scores(h) for h in hist] for name, hist in held.hists.items()}
    records = []
    for fi in inputs:
        for index, (lr, wd) in enumerate(config.grid):
            point = scores[fi.name][index] if scores else None
            records.append(record(grid_point_name(fi.name, lr, wd), METHOD, fi, point, METRICS, lr=lr,
                                  weight_decay=wd))
    chosen = max(records, key=_select_key) if held_rows is not None else records[0]
    feature_input = FeatureInput(tuple(chosen["parts"]))
    point = (chosen["lr"], chosen["weight_decay"])
    refit_all = bool(refit or held_rows is None)
    if refit_all and held_rows is not None:
        again = train_seg_grid(train, [feature_input], all_rows, config, grid=[point], progress=progress)
        tensors = again.stacks[feature_input.name].head(0)
    else:
        tensors = trained.stacks[feature_input.name].head(config.grid.index(point))
    head = SegmentationHead.from_tensors(feature_input, tensors, train.dims(feature_input.parts))
    classes = train.classes or [str(i) for i in range(train.num_classes)]
    measured = {m: None for m in METRICS}
    per_class, per_class_csv, shown, val_metrics, confusion = "", "", [], None, None
    if val is not None:
        stack = SegHeadStack.from_head(head, config)
        evaluation = evaluate_seg_stacks({feature_input.name: stack}, [feature_input], val,
                                         np.arange(val.num_images), config, keep=config.show_images, confusion=True)
        hist = evaluation.hists[feature_input.name][0]
        val_metrics = segmentation_metrics(hist)
        measured = {m: finite_or_none(val_metrics[m]) for m in METRICS}
        per_class, per_class_csv = per_class_table(val_metrics, classes, hist[2])
        shown, confusion = evaluation.shown, evaluation.confusion
    hyper = {"lr": chosen["lr"], "weight_decay": chosen["weight_decay"]}
    settings = {"optimizer": config.optimizer, "epochs": config.epochs, "batch_size": config.batch_size,
                "device": str(config.device), "bn": config.bn, "standardized": head.standardizer is not None}
    summary = {"task": "segmentation", "method": METHOD, "feature": feature_input.name, **measured, **hyper,
               "hyperparameters": hyper, **{f"holdout_{m}": chosen.get(f"holdout_{m}") for m in METRICS},
               "chosen": chosen["name"],
               "selection": "holdout" if held_rows is not None else "single grid point (no selection)",
               "holdout_fraction": holdout_fraction if held_rows is not None else 0.0, "seed": seed,
               "refit_on_all_train": refit_all, "num_train": train.num_images, "num_fit": int(fit_rows.size),
               "num_holdout": 0 if held_rows is None else int(held_rows.size),
               "num_val": None if val is None else val.num_images, "num_classes": train.num_classes,
               "classes": classes, "grid_size": grid_size, "train": train.source,
               "val": None if val is None else val.source, **settings,
               "checkpoint": train_checkpoint(train), "metrics_arithmetic": metrics_arithmetic(),
               "mmseg": mmseg_head_settings(head, norm=train_norm(train), checkpoint=train_checkpoint(train))}
    if val_metrics is not None:
        summary["per_class"] = {name: {"IoU": finite_or_none(iou * 100), "Acc": finite_or_none(acc * 100)}
                                for name, iou, acc in zip(classes, val_metrics["IoU"], val_metrics["Acc"])}
    if protocol is not None:
        summary["protocol"] = protocol
    summary["seconds"] = round(time.monotonic() - started, 3)
    table = format_table(records, chosen["name"], summary, METRICS)
    if out is not None:
        from .plot import plot_grid

        write_json_lines(out / GRID_FILE, records)
        meta = {"method": METHOD, "task": "segmentation", "feature": feature_input.name,
                "parts": list(feature_input.parts), "part_dims": head.part_dims, "dim": head.dim,
                "num_classes": train.num_classes, "classes": classes, "patch_size": train.patch_size,
                "hyperparameters": hyper, "grid_point": chosen["name"], "train": train.source,
                "refit_on_all_train": refit_all, "provenance": train.provenance(), **settings}
        save_head(out, meta, head.tensors())
        export_mmseg_checkpoint(head, out / MMSEG_CHECKPOINT_FILE, classes=classes, palette=train.palette,
                                norm=train_norm(train), checkpoint=train_checkpoint(train), extra_meta={"grid_point": chosen["name"], "seed": seed, "val_mIoU": measured["mIoU"]})
        plot_grid(records, out / PLOT_FILE, method=METHOD, hyperparameters=("lr", "weight_decay"),
                  chosen=chosen["name"], metric="mIoU")
        files = {"grid": GRID_FILE, "head": HEAD_JSON_FILE, "mmseg_checkpoint": MMSEG_CHECKPOINT_FILE,
                 "plot": PLOT_FILE, "per_class": None, "predictions_plot": None, "confusion": None,
                 "confusion_plot": None}
        if per_class_csv:
            write_text(out / PER_CLASS_FILE, per_class_csv)
            files["per_class"] = PER_CLASS_FILE
        if confusion is not None:
            write_text(out / CONFUSION_FILE, confusion_csv(confusion, classes))
            plot_confusion(confusion, classes, out / CONFUSION_PLOT_FILE)
            files.update(confusion=CONFUSION_FILE, confusion_plot=CONFUSION_PLOT_FILE)
        if shown:
            plot_predictions(shown, train.palette, out / PREDICTIONS_PLOT_FILE, classes)
            files["predictions_plot"] = PREDICTIONS_PLOT_FILE
        summary["files"] = files
        write_json(out / SUMMARY_FILE, summary)
    if verbose:
        print(table if not per_class else f"{table}\n{per_class}")
    return SegmentationResult(summary, records, head, out, table, per_class)
