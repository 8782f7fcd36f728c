"""mmseg's IoUMetric numbers for segmentation probes: per-head histograms (intersection, prediction, label)
summed over a set, mIoU / mAcc / aAcc and per-class IoU / accuracy from them, the per-class table and the
confusion matrix."""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from .seg_defaults import IGNORE_INDEX

METRICS = ("mIoU", "mAcc", "aAcc")


def head_histograms(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(H, 3, C) int64 histograms (intersection, prediction, label) of H predictions ``pred`` (H, N)
    against ``label`` (N,), pixels labelled ``ignore_index`` left out; values outside 0..C-1 are not
    counted in a histogram (as ``torch.histc`` in mmseg's ``IoUMetric.intersect_and_union``)."""
    pred = pred.reshape(pred.shape[0], -1).long()
    label = label.reshape(-1).long()
    keep = label != ignore_index
    pred, label = pred[:, keep], label[keep]
    heads = pred.shape[0]
    size = heads * num_classes

    def count(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        inside = (values >= 0) & (values < num_classes)
        flat = (values + offsets)[inside]
        return torch.bincount(flat, minlength=size)[:size].view(heads, num_classes)

    offsets = torch.arange(heads, device=pred.device).view(heads, 1) * num_classes
    hit = pred == label
    inter = count(torch.where(hit, pred, torch.full_like(pred, -1)), offsets)
    predicted = count(pred, offsets)
    labelled = count(label.view(1, -1).expand(heads, -1), offsets)
    return torch.stack([inter, predicted, labelled], dim=1)


def intersect_and_union(pred, label, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(4, C) int64: area_intersect, area_union, area_pred_label, area_label of one prediction."""
    hist = head_histograms(torch.as_tensor(np.asarray(pred)).view(1, -1), torch.as_tensor(np.asarray(label)),
                           num_classes, ignore_index)[0].numpy()
    inter, predicted, labelled = hist
    return np.stack([inter, predicted + labelled - inter, predicted, labelled])


def metrics_arithmetic() -> str:
    """Whose arithmetic turns summed areas into metrics: mmseg's ``IoUMetric.total_area_to_metrics`` when mmseg
    imports, else this module's copy of it (the same float64 divisions; tests compare the two)."""
    return "mmseg IoUMetric.total_area_to_metrics" if _mmseg_areas_to_metrics() else "sail-vision (mmseg not installed)"


def _mmseg_areas_to_metrics():
    try:
        from mmseg.evaluation.metrics import IoUMetric
    except Exception:  # mmseg is an optional extra; any import failure means "not available"
        return None
    return IoUMetric.total_area_to_metrics


def segmentation_metrics(hist: np.ndarray, *, use_mmseg: bool = True) -> dict[str, Any]:
    """mmseg's IoUMetric numbers from summed (3, C) histograms (intersection, prediction, label):
    ``aAcc``, ``mIoU``, ``mAcc`` in percent (not rounded) and per-class ``IoU`` / ``Acc`` (fractions,
    NaN where undefined). The per-class values come from mmseg's ``total_area_to_metrics`` when mmseg is
    installed (``use_mmseg``), else from the same float64 divisions here."""
    inter, predicted, labelled = (np.asarray(h, dtype=np.float64) for h in hist)
    union = predicted + labelled - inter
    to_metrics = _mmseg_areas_to_metrics() if use_mmseg else None
    if to_metrics is not None:
        found = to_metrics(*[torch.from_numpy(a) for a in (inter, union, predicted, labelled)], ["mIoU"])
        iou, acc = (np.asarray(found[k], dtype=np.float64) for k in ("IoU", "Acc"))
        all_acc = float(found["aAcc"])
    else:
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / union
            acc = inter / labelled
            all_acc = inter.sum() / labelled.sum()

    def percent(values):
        if np.all(np.isnan(values)):
            return float("nan")
        return float(np.nanmean(values) * 100)

    return {"aAcc": float(all_acc * 100), "mIoU": percent(iou), "mAcc": percent(acc), "IoU": iou, "Acc": acc}


def confusion_counts(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(C, C) int64 pixel counts, row = true class, column = predicted class, of ``pred`` against ``label``
    (any equal shapes); pixels labelled ``ignore_index`` and predictions outside 0..C-1 are left out, so the
    diagonal is mmseg's area_intersect, row sums its area_label and column sums its area_pred_label."""
    pred = pred.reshape(-1).long()
    label = label.reshape(-1).long()
    keep = (label != ignore_index) & (pred >= 0) & (pred < num_classes)
    flat = label[keep] * num_classes + pred[keep]
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def confusion_csv(matrix: np.ndarray, classes: Sequence[str]) -> str:
    """The confusion matrix as CSV (quoted as the csv module does): a header ``true\\predicted`` then the
    predicted classes' names, then a row per true class: its name and its pixel counts."""
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["true\\predicted", *classes])
    writer.writerows([name, *(int(v) for v in row)] for name, row in zip(classes, np.asarray(matrix)))
    return buffer.getvalue()


def finite_or_none(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def per_class_table(metrics: Mapping, classes: Sequence[str], pixels: np.ndarray) -> tuple[str, str]:
    """(printed table, CSV) of per-class IoU and accuracy in percent ('nan' where mmseg gives NaN)."""
    width = max([len(c) for c in classes] + [5])
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'Acc':>7}  {'pixels':>10}"]
    rows = ["class,IoU,Acc,pixels"]
    for name, iou, acc, count in zip(classes, metrics["IoU"], metrics["Acc"], pixels):
        lines.append(f"{name:<{width}}  {iou * 100:>7.2f}  {acc * 100:>7.2f}  {int(count):>10}")
        rows.append(f"{name},{iou * 100:.4f},{acc * 100:.4f},{int(count)}")
    return "\n".join(lines), "\n".join(rows) + "\n"


