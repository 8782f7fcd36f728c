"""scikit-learn's LogisticRegression with a sweep over C (the CLIP linear-probe protocol).

Unlike the streamed linear grid, L-BFGS needs the training matrix in memory: one feature input
is loaded as float32 at a time.
"""

from __future__ import annotations

import math
import warnings
from typing import Sequence

import numpy as np

from .data import ProbeDataError

from .defaults import DEFAULT_CS, DEFAULT_MAX_ITER  # noqa: F401 - re-exported

#: Below this many multiply-adds per L-BFGS step (rows x dims x classes) BLAS runs single-threaded:
#: threads do not pay off on small problems and busy-wait badly on a loaded machine.
SMALL_PROBLEM = 50_000_000


def grid_point_name(feature: str, c: float) -> str:
    return f"logreg_{feature}_C{c:.3g}"


def check_cs(cs: Sequence[float]) -> None:
    if not len(cs) or any(not (c > 0 and math.isfinite(c)) for c in cs):
        raise ProbeDataError(f"--Cs must be positive numbers, got {list(cs)}")


def fit_logreg(x: np.ndarray, y: np.ndarray, c: float, *, max_iter: int = DEFAULT_MAX_ITER, seed: int = 0):
    """A fitted ``LogisticRegression(C=c)`` (lbfgs, multinomial); convergence warnings are kept quiet
    and reported on the returned model as ``converged_``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    model = LogisticRegression(C=float(c), max_iter=int(max_iter), random_state=seed)
    small = x.shape[0] * x.shape[1] * max(len(np.unique(y)), 2) < SMALL_PROBLEM
    with warnings.catch_warnings(record=True) as caught, threadpool_limits(1 if small else None):
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(x, y)
    model.converged_ = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return model


def head_tensors(model, num_classes: int) -> dict[str, np.ndarray]:
    """The saved-head format (weight (C, D), bias (C,)) of a fitted model, classes placed at their
    label index (absent classes get a -inf-like bias so they are never predicted)."""
    coef = np.asarray(model.coef_, np.float32)
    intercept = np.asarray(model.intercept_, np.float32)
    if coef.shape[0] == 1 and len(model.classes_) == 2:  # binary: softmax([0, z]) == sigmoid(z)
        coef = np.stack([np.zeros_like(coef[0]), coef[0]])
        intercept = np.asarray([0.0, intercept[0]], np.float32)
    weight = np.zeros((num_classes, coef.shape[1]), np.float32)
    bias = np.full(num_classes, -1e9, np.float32)
    weight[model.classes_] = coef
    bias[model.classes_] = intercept
    return {"weight": weight, "bias": bias}
