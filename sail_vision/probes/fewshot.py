"""Few-shot results with confidence intervals, and the bootstrap interval of a full-data result.

``--shots K [K ...] --seeds S``: for each K and each of S seeds, K training rows of every class are drawn
(``numpy.random.default_rng([seed, K, s])``: the same rows for the same seed, on any machine), the chosen
method is trained on them with the hyper-parameters selected on the full training data (a K-shot subset is
too small to hold rows out of), and scored once on val. Each K gets ``{"shots", "seeds",
"top1_per_seed", "top1_mean", "top1_ci95"}``: the Student-t 95 % interval of the mean over seeds
(``mean ± t(0.975, S-1) · sd / sqrt(S)``, sd with S-1 degrees of freedom; None for S = 1).

A full-data top-1 gets a percentile bootstrap interval over the val rows (``bootstrap_ci``).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import ProbeDataError

#: Val resamples of the bootstrap interval.
BOOTSTRAP_RESAMPLES = 1000


def check_shots(shots: Sequence[int], seeds: int) -> list[int]:
    """The shot counts as a sorted list of distinct positive ints, or a one-line error."""
    values = sorted({int(k) for k in shots})
    if not values or values[0] < 1:
        raise ProbeDataError(f"--shots must be whole numbers >= 1, got {list(shots)}")
    if int(seeds) < 1:
        raise ProbeDataError(f"--seeds must be >= 1, got {seeds}")
    return values


def sample_shots(labels: np.ndarray, shots: int, seed: int, index: int, class_name=str) -> np.ndarray:
    """Sorted rows: ``shots`` of every class present in ``labels``, drawn with ``default_rng([seed, shots, index])``.
    A class with fewer rows than ``shots`` is refused (its name and count in the error)."""
    rng = np.random.default_rng([int(seed), int(shots), int(index)])
    picked = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        if rows.size < shots:
            raise ProbeDataError(f"--shots {shots}: class {class_name(int(label))!r} has only {rows.size} training "
                                 f"rows; use fewer shots")
        picked.append(rng.choice(rows, size=shots, replace=False))
    return np.sort(np.concatenate(picked))


def t_interval(values: Sequence[float], level: float = 0.95) -> list[float] | None:
    """Student-t interval of the mean of ``values`` (None with fewer than two values)."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    if values.size < 2:
        return None
    mean = float(values.mean())
    half = float(stats.t.ppf(0.5 + level / 2, values.size - 1) * values.std(ddof=1) / math.sqrt(values.size))
    return [mean - half, mean + half]


def few_shot_entry(shots: int, seeds: int, top1: Sequence[float]) -> dict:
    return {"shots": int(shots), "seeds": int(seeds), "top1_per_seed": [float(v) for v in top1],
            "top1_mean": float(np.mean(top1)), "top1_ci95": t_interval(top1)}


def bootstrap_ci(correct: np.ndarray, seed: int, resamples: int = BOOTSTRAP_RESAMPLES,
                 level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval (percent) of the accuracy of (N,) booleans ``correct``, resampling rows
    with ``default_rng(seed)``; None without rows. Memory is bounded: resamples are drawn in blocks."""
    correct = np.asarray(correct, dtype=np.float64)
    n = correct.size
    if n == 0:
        return None
    rng = np.random.default_rng(int(seed))
    block = max(1, min(resamples, 20_000_000 // n))
    means = []
    for start in range(0, resamples, block):
        picks = rng.integers(0, n, size=(min(block, resamples - start), n))
        means.append(correct[picks].mean(axis=1))
    means = np.concatenate(means) * 100
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def plot_few_shot(entries: Sequence[dict], out_file, *, full_top1: float | None = None,
                  full_ci: Sequence[float] | None = None, title: str = ""):
    """Mean top-1 against shots (log axis) with the 95 % intervals as error bars; the full-data result as a line."""
    from .plot import pyplot, save_figure

    figure, axis = pyplot().subplots(figsize=(5.5, 3.8))
    shots = [e["shots"] for e in entries]
    means = [e["top1_mean"] for e in entries]
    low = [e["top1_mean"] - e["top1_ci95"][0] if e["top1_ci95"] else 0.0 for e in entries]
    high = [e["top1_ci95"][1] - e["top1_mean"] if e["top1_ci95"] else 0.0 for e in entries]
    axis.errorbar(shots, means, yerr=[low, high], marker="o", capsize=3, label="few-shot (95 % t interval)")
    if full_top1 is not None:
        axis.axhline(full_top1, color="grey", linestyle="--", label="all training rows")
        if full_ci:
            axis.axhspan(full_ci[0], full_ci[1], color="grey", alpha=0.15)
    axis.set_xscale("log")
    axis.set_xticks(shots, [str(k) for k in shots])
    axis.set_xlabel("training rows per class")
    axis.set_ylabel("val top-1 (%)")
    axis.set_title(title or "few-shot accuracy")
    axis.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, out_file)
