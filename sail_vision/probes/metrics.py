"""Top-k accuracy of logits or scores, for one head or a stack of heads."""

from __future__ import annotations

import numpy as np
import torch


def topk_correct(scores: torch.Tensor, labels: torch.Tensor, ks=(1, 5)) -> dict[int, torch.Tensor]:
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
