"""scikit-learn's LogisticRegression with a sweep over C (the CLIP linear-probe protocol).

Unlike the streamed linear grid, L-BFGS needs the training matrix in memory: one feature input
is loaded as float32 at a time, on the CPU (``--device`` does not apply).

Reproducibility: on float32 features L-BFGS's path depends on the BLAS thread count (a threaded
matrix product sums in another order; on the digits data 1 and 2 threads stop after 773 and 271
iterations at different optima). Every fit therefore runs under :func:`blas_limits`, which fixes
the thread count from the problem size alone, and the summary records it.
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar, Mapping, Sequence

import numpy as np
import torch

from .data import ProbeData
from .defaults import DEFAULT_CHUNK_ROWS, DEFAULT_CS, DEFAULT_MAX_ITER
from .errors import ProbeDataError
from .inputs import FeatureInput
from .linear import LinearHead, linear_logits
from .methods import ClassificationMethod, record, register_method
from .metrics import topk_accuracy
from .standardize import Standardizer

#: Below this many multiply-adds per L-BFGS step (rows x dims x classes) BLAS runs single-threaded:
#: threads do not pay off on small problems and busy-wait badly on a loaded machine.
SMALL_PROBLEM = 50_000_000


def grid_point_name(feature: str, c: float) -> str:
    return f"logreg_{feature}_C{c:.3g}"


def check_cs(cs: Sequence[float]) -> None:
    if not len(cs):
        raise ProbeDataError("--Cs: the grid is empty; give at least one value")
    if any(not (c > 0 and math.isfinite(c)) for c in cs):
        raise ProbeDataError(f"--Cs must be positive numbers, got {list(cs)}")


def blas_threads(rows: int, dim: int, classes: int) -> int | None:
    """BLAS threads for an L-BFGS fit of this size: 1 for small problems, else None (the library's default)."""
    return 1 if rows * dim * max(classes, 2) < SMALL_PROBLEM else None


def blas_limits(x: np.ndarray, y: np.ndarray):
    """The thread limit every logistic-regression fit of ``(x, y)`` runs under (a context manager).
    Wrap a reference ``LogisticRegression.fit`` in it to reproduce :func:`fit_logreg` exactly."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(blas_threads(x.shape[0], x.shape[1], len(np.unique(y))), user_api="blas")


def fit_logreg(x: np.ndarray, y: np.ndarray, c: float, *, max_iter: int = DEFAULT_MAX_ITER, seed: int = 0):
    """A fitted ``LogisticRegression(C=c)`` (lbfgs, multinomial) under :func:`blas_limits`; convergence
    warnings are kept quiet and reported on the returned model as ``converged_``."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=float(c), max_iter=int(max_iter), random_state=seed)
    with warnings.catch_warnings(record=True) as caught, blas_limits(x, y):
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


@register_method
class LogregMethod(ClassificationMethod):
    """A sweep of scikit-learn's L-BFGS logistic regression over C (CLIP-style)."""

    name: ClassVar[str] = "logreg"
    summary: ClassVar[str] = "scikit-learn LogisticRegression (L-BFGS) over --Cs"
    hyperparameters: ClassVar[tuple[str, ...]] = ("C",)

    def __init__(self, cs: Sequence[float] = DEFAULT_CS, *, max_iter: int = DEFAULT_MAX_ITER,
                 standardize: bool = False, seed: int = 0, chunk_rows: int = DEFAULT_CHUNK_ROWS):
        self.cs = [float(c) for c in cs]
        self.max_iter = int(max_iter)
        self.standardize = bool(standardize)
        self.seed = seed
        self.chunk_rows = chunk_rows
        self.threads: int | None = None

    def check(self) -> None:
        check_cs(self.cs)
        if self.max_iter < 1:
            raise ProbeDataError(f"--max-iter must be >= 1, got {self.max_iter}")

    def grid_size(self, inputs: Sequence[FeatureInput]) -> int:
        return len(inputs) * len(self.cs)

    def _matrix(self, train: ProbeData, feature_input: FeatureInput, rows: np.ndarray,
                standardizer: Standardizer | None) -> np.ndarray:
        x = train.gather(feature_input, rows)
        return x if standardizer is None else standardizer.apply(x)

    def _standardizer(self, train: ProbeData, feature_input: FeatureInput, rows: np.ndarray) -> Standardizer | None:
        return Standardizer.fit(train, feature_input, rows, self.chunk_rows) if self.standardize else None

    def fit_grid(self, train: ProbeData, inputs: Sequence[FeatureInput], num_classes: int, fit_rows: np.ndarray,
                 held_rows: np.ndarray | None, *, progress: bool = True) -> list[dict]:
        from tqdm.auto import tqdm

        records = []
        with tqdm(total=len(inputs) * len(self.cs), desc="logreg sweep", disable=not progress, leave=False) as bar:
            for feature_input in inputs:
                x_fit = x_held = None
                if held_rows is not None:
                    standardizer = self._standardizer(train, feature_input, fit_rows)
                    x_fit = self._matrix(train, feature_input, fit_rows, standardizer)
                    x_held = torch.from_numpy(self._matrix(train, feature_input, held_rows, standardizer))
                for c in self.cs:
                    scores = None
                    if held_rows is not None:
                        model = fit_logreg(x_fit, train.labels[fit_rows], c, max_iter=self.max_iter, seed=self.seed)
                        head = head_tensors(model, num_classes)
                        logits = linear_logits(x_held, torch.from_numpy(head["weight"]), torch.from_numpy(head["bias"]))
                        scores = topk_accuracy(logits, train.labels[held_rows])
                    records.append(record(grid_point_name(feature_input.name, c), self.name, feature_input, scores,
                                          self.metrics, C=c))
                    bar.update(1)
        return records

    def refit(self, train: ProbeData, chosen: Mapping, num_classes: int, rows: np.ndarray, *,
              progress: bool = True) -> LinearHead:
        feature_input = FeatureInput(tuple(chosen["parts"]))
        standardizer = self._standardizer(train, feature_input, rows)
        x = self._matrix(train, feature_input, rows, standardizer)
        model = fit_logreg(x, train.labels[rows], chosen["C"], max_iter=self.max_iter, seed=self.seed)
        self.threads = blas_threads(x.shape[0], x.shape[1], len(np.unique(train.labels[rows])))
        tensors = head_tensors(model, num_classes)
        return LinearHead(feature_input, tensors["weight"], tensors["bias"], standardizer,
                          extra_meta={"max_iter": self.max_iter, "converged": bool(model.converged_)})

    def settings(self) -> dict:
        return {"max_iter": self.max_iter, "blas_threads": self.threads or "library default"}

    @classmethod
    def load_head(cls, meta: Mapping, tensors: Mapping[str, np.ndarray], *, device: str = "cpu", **_) -> LinearHead:
        return LinearHead.from_saved(meta, tensors, device=device)
