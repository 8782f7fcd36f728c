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

from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import numpy as np

from .dense import DenseGridMethod
from .errors import ProbeDataError
from .inputs import FeatureInput
from .linear import grid_point_name
from .methods import record, register_method
from .results import (GRID_FILE, HEAD_JSON_FILE, HEAD_TENSORS_FILE, LAYERS_PLOT_FILE, PLOT_FILE, SUMMARY_FILE,
                      write_text)
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
SEG_RUN_FILES = (GRID_FILE, SUMMARY_FILE, HEAD_TENSORS_FILE, HEAD_JSON_FILE, PLOT_FILE, LAYERS_PLOT_FILE,
                 PER_CLASS_FILE, PREDICTIONS_PLOT_FILE, MMSEG_CHECKPOINT_FILE, CONFUSION_FILE, CONFUSION_PLOT_FILE)


# ---------------------------------------------------------------------------------- the method
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


@register_method
class SegmentationMethod(DenseGridMethod):
    """DINOv2's linear segmentation head as a method of :func:`~.runner.run_probe`: the runner splits (whole
    source images), selects, refits, evaluates and writes; this class trains and scores the grid, and adds
    the mmseg checkpoint, per-class table, confusion matrix and predictions picture."""

    name: ClassVar[str] = METHOD
    task: ClassVar[str] = "segmentation"
    summary: ClassVar[str] = "DINOv2's linear segmentation head (BN + 1x1 conv) on patch features and masks"
    hyperparameters: ClassVar[tuple[str, ...]] = ("lr", "weight_decay")
    metrics: ClassVar[tuple[str, ...]] = METRICS
    run_files: ClassVar[tuple[str, ...]] = SEG_RUN_FILES
    result_name: ClassVar[str] = "segmentation probe result"
    config_class: ClassVar[type] = SegmentationConfig

    def validate(self, train, val, inputs):
        check_train_val(train, val, inputs)
        return train.num_classes, val

    def fit_grid(self, train, inputs, num_classes, fit_rows, held_rows, *, progress: bool = True) -> list[dict]:
        config = self.config
        trained = train_seg_grid(train, inputs, fit_rows, config, progress=progress)
        self._trained = (np.asarray(fit_rows), trained)
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
        return records

    def refit(self, train, chosen: Mapping, num_classes: int, rows: np.ndarray, *,
              progress: bool = True) -> SegmentationHead:
        feature_input = FeatureInput(tuple(chosen["parts"]))
        point = (chosen["lr"], chosen["weight_decay"])
        kept = self._trained
        if kept is not None and np.array_equal(kept[0], rows) and feature_input.name in kept[1].stacks:
            tensors = kept[1].stacks[feature_input.name].head(self.config.grid.index(point))
        else:
            again = train_seg_grid(train, [feature_input], rows, self.config, grid=[point], progress=progress)
            tensors = again.stacks[feature_input.name].head(0)
        return SegmentationHead.from_tensors(feature_input, tensors, train.dims(feature_input.parts))

    def evaluate(self, probe, val) -> tuple[dict, None]:
        head = probe.head
        stack = SegHeadStack.from_head(head, self.config)
        evaluation = evaluate_seg_stacks({head.feature_input.name: stack}, [head.feature_input], val,
                                         np.arange(val.num_images), self.config, keep=self.config.show_images,
                                         confusion=True)
        hist = evaluation.hists[head.feature_input.name][0]
        found = segmentation_metrics(hist)
        self._evaluation = (found, hist, evaluation)
        return {m: finite_or_none(found[m]) for m in METRICS}, None

    def settings(self) -> dict:
        c = self.config
        return {"optimizer": c.optimizer, "epochs": c.epochs, "batch_size": c.batch_size, "device": str(c.device),
                "bn": c.bn}

    @staticmethod
    def class_names(train) -> list[str]:
        return train.classes or [str(i) for i in range(train.num_classes)]

    def head_meta(self, train, head: SegmentationHead, chosen: Mapping, trained_rows, num_classes: int) -> dict:
        return {"method": METHOD, "task": "segmentation", "feature": head.feature_input.name,
                "parts": list(head.feature_input.parts), "part_dims": head.part_dims, "dim": head.dim,
                "num_classes": num_classes, "classes": self.class_names(train), "patch_size": train.patch_size,
                "grid_point": chosen["name"], "train": train.source, "provenance": train.provenance(),
                **self.settings(), "standardized": head.standardizer is not None}

    def summary_extras(self, train, head: SegmentationHead) -> dict:
        classes = self.class_names(train)
        extras = {"task": "segmentation", "classes": classes, "num_train": train.num_images,
                  "checkpoint": train_checkpoint(train), "metrics_arithmetic": metrics_arithmetic(),
                  "mmseg": mmseg_head_settings(head, norm=train_norm(train), checkpoint=train_checkpoint(train))}
        if self._evaluation is not None:
            found = self._evaluation[0]
            extras["per_class"] = {name: {"IoU": finite_or_none(iou * 100), "Acc": finite_or_none(acc * 100)}
                                   for name, iou, acc in zip(classes, found["IoU"], found["Acc"])}
        return extras

    def per_class_text(self, train) -> tuple[str, str]:
        if self._evaluation is None:
            return "", ""
        found, hist, _ = self._evaluation
        return per_class_table(found, self.class_names(train), hist[2])

    def write_outputs(self, out: Path, train, head: SegmentationHead, summary: Mapping) -> dict:
        """The segmentation files beside the runner's: mmseg checkpoint, per-class CSV, confusion, predictions."""
        classes = self.class_names(train)
        export_mmseg_checkpoint(head, out / MMSEG_CHECKPOINT_FILE, classes=classes, palette=train.palette,
                                norm=train_norm(train), checkpoint=train_checkpoint(train),
                                extra_meta={"grid_point": summary["chosen"], "seed": summary["seed"],
                                            "val_mIoU": summary.get("mIoU")})
        files = {"mmseg_checkpoint": MMSEG_CHECKPOINT_FILE, "per_class": None, "predictions_plot": None,
                 "confusion": None, "confusion_plot": None}
        if self._evaluation is None:
            return files
        _, _, evaluation = self._evaluation
        write_text(out / PER_CLASS_FILE, self.per_class_text(train)[1])
        files["per_class"] = PER_CLASS_FILE
        if evaluation.confusion is not None:
            write_text(out / CONFUSION_FILE, confusion_csv(evaluation.confusion, classes))
            plot_confusion(evaluation.confusion, classes, out / CONFUSION_PLOT_FILE)
            files.update(confusion=CONFUSION_FILE, confusion_plot=CONFUSION_PLOT_FILE)
        if evaluation.shown:
            plot_predictions(evaluation.shown, train.palette, out / PREDICTIONS_PLOT_FILE, classes)
            files["predictions_plot"] = PREDICTIONS_PLOT_FILE
        return files

    @classmethod
    def load_head(cls, meta: Mapping, tensors, **_):
        raise ProbeDataError(f"{meta.get('folder', 'this folder')}: a segmentation head is applied with the backbone: "
                             f"python tools/test.py CONFIG {MMSEG_CHECKPOINT_FILE} (see its summary.json \"mmseg\")")


def run_segmentation_probe(train: SegmentationData, val: SegmentationData | None, inputs: Sequence[FeatureInput],
                           out: str | Path | None, config: SegmentationConfig | None = None, *,
                           holdout_fraction: float = 0.1, seed: int = 0, refit: bool = True,
                           overwrite: bool = False, progress: bool = True, verbose: bool = True,
                           protocol: dict | None = None) -> SegmentationResult:
    """:func:`~.runner.run_probe` with :class:`SegmentationMethod`: the grid trained on train's images minus a
    seeded held-out ``holdout_fraction`` of source images (no hold-out with a single grid point), chosen by
    held-out mIoU (then mAcc, aAcc), refit on all train (``refit``), evaluated once on ``val``, and, with
    ``out``, the results folder written."""
    from .runner import run_probe

    method = SegmentationMethod(replace(config or SegmentationConfig(), seed=seed))
    result = run_probe(train, val, inputs, out, method=method, holdout_fraction=holdout_fraction, seed=seed,
                       refit=refit, overwrite=overwrite, progress=progress, verbose=False, protocol=protocol)
    per_class = method.per_class_text(train)[0]
    if verbose:
        print(result.table if not per_class else f"{result.table}\n{per_class}")
    return SegmentationResult(result.summary, result.records, result.probe.head, result.out, result.table, per_class)
