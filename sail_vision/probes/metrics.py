"""Top-k accuracy of logits or scores, for one head or a stack of heads: the one classification metric
of the probes (``sail-vision probe``, saved heads, and the mmengine ``ProbeAccuracy`` metric)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

TOPK = (1, 5)


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = TOPK) -> dict[int, torch.Tensor]:
    """Number of rows whose label is among the top-k scores, for each k.

    ``scores``: (N, C) or (N, H, C) for H heads; returns {k: scalar or (H,) count}. k is capped
    at C (top-5 of a 3-class problem is top-3, i.e. always right).
    """
    num_classes = scores.shape[-1]
    largest = min(max(ks), num_classes)
    top = scores.topk(largest, dim=-1).indices  # (N, [H,] kmax)
    target = labels.view(-1, *([1] * (scores.dim() - 1)))
    hits = top == target
    return {k: hits[..., :min(k, num_classes)].any(-1).sum(0) for k in ks}


def accuracy_percent(correct, total: int) -> float | list[float]:
    """Correct counts -> accuracy in percent (a float, or a list for several heads)."""
    values = np.asarray(correct.cpu().numpy() if isinstance(correct, torch.Tensor) else correct, dtype=np.float64)
    values = 100.0 * values / max(total, 1)
    return values.tolist() if values.ndim else float(values)


class TopkCounter:
    """Accumulates top-k hits over batches (on the scores' device, no sync per batch);
    ``percent()`` gives ``{"top1": ..., "top5": ...}`` (floats, or lists for stacked heads)."""

    def __init__(self, ks: Sequence[int] = TOPK):
        self.ks = tuple(ks)
        self.hits: dict[int, torch.Tensor | int] = {k: 0 for k in self.ks}
        self.total = 0

    def add(self, scores: torch.Tensor, labels: torch.Tensor) -> None:
        for k, count in topk_correct(scores, labels.to(scores.device), self.ks).items():
            self.hits[k] = self.hits[k] + count
        self.total += int(labels.shape[0])

    def percent(self) -> dict[str, float | list[float]]:
        return {f"top{k}": accuracy_percent(self.hits[k], self.total) for k in self.ks}


def topk_accuracy(scores, labels, ks: Sequence[int] = TOPK) -> dict[str, float]:
    """{"top1": ..., "top5": ...} in percent of (N, C) scores (numpy or torch) against (N,) labels."""
    counter = TopkCounter(ks)
    counter.add(torch.as_tensor(np.asarray(scores) if isinstance(scores, np.ndarray) else scores),
                torch.as_tensor(np.asarray(labels) if isinstance(labels, np.ndarray) else labels))
    return counter.percent()
