"""The interface every probe method implements, and the registry that builds and reloads them.

A :class:`ProbeMethod` sweeps its grid over every feature input (``fit_grid``: one record per grid
point, scored on the held-out rows), then trains the chosen point again (``refit``) into a
:class:`Head`; :func:`sail_vision.probes.runner.run_probe` does the selection and the bookkeeping
around them, identical for every method. A :class:`Head` scores features (``scores``) and saves
itself (``tensors`` + ``meta``); :func:`load_head` rebuilds one from a saved ``head.json``.
``validate`` and ``evaluate`` say what the labels are and how val is scored; the classification
methods share them through :class:`ClassificationMethod` (labels per row, top-1 / top-5).

Records are plain dicts: ``name`` (encodes the hyper-parameters), ``method``, ``feature``,
``parts``, the method's hyper-parameters and its selection metrics prefixed with ``holdout_``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from .data import ProbeData
from .defaults import DEFAULT_CHUNK_ROWS
from .errors import ProbeDataError
from .inputs import FeatureInput


@runtime_checkable
class Head(Protocol):
    """A trained head: class scores for features, and its saved form."""

    feature_input: FeatureInput
    num_classes: int

    def scores(self, data: ProbeData, rows: np.ndarray | None = None) -> np.ndarray:
        """(rows, C) class scores (logits, or k-NN vote weights) of ``rows`` (default all) of ``data``."""

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """Scores turned into per-row class probabilities (softmax, or normalised votes)."""

    def tensors(self) -> dict[str, np.ndarray]:
        """Arrays saved to ``head.safetensors``."""

    def meta(self) -> dict:
        """Method-specific fields of ``head.json``."""


@runtime_checkable
class ProbeMethod(Protocol):
    """One way of probing (linear grid, logreg, k-NN; later segmentation heads)."""

    name: ClassVar[str]
    #: Hyper-parameters each record carries, in the order of the summary (e.g. ``("lr", "weight_decay")``).
    hyperparameters: ClassVar[tuple[str, ...]]
    #: Metrics of a record, best-first tie-break order; records hold them as ``holdout_<metric>``.
    metrics: ClassVar[tuple[str, ...]]

    def check(self) -> None:
        """Refuse bad settings (empty or invalid grids) before any data is read."""

    def validate(self, train: ProbeData, val: ProbeData | None, inputs: Sequence[FeatureInput]
                 ) -> tuple[int, ProbeData | None]:
        """Refuse unusable data; returns (number of classes, val with its labels in train's numbering)."""

    def evaluate(self, probe, val: ProbeData) -> tuple[dict[str, float], np.ndarray]:
        """({metric: value} on val, predictions) of the chosen head (a ``results.LoadedProbe``)."""

    def grid_size(self, inputs: Sequence[FeatureInput]) -> int:
        """Number of grid points over ``inputs``."""

    def fit_grid(self, train: ProbeData, inputs: Sequence[FeatureInput], num_classes: int, fit_rows: np.ndarray,
                 held_rows: np.ndarray | None, *, progress: bool = True) -> list[dict]:
        """Every grid point trained on ``fit_rows`` and scored on ``held_rows`` (metrics None without)."""

    def refit(self, train: ProbeData, chosen: Mapping, num_classes: int, rows: np.ndarray, *,
              progress: bool = True) -> Head:
        """The chosen grid point trained on ``rows``."""

    def settings(self) -> dict:
        """Settings shared by the grid (optimizer, epochs, temperature...), for the summary and head.json."""


class ClassificationMethod:
    """What the classification methods share: one label per row (classes matched by name between train
    and val) and top-1 / top-5 accuracy. Subclasses set ``chunk_rows`` and implement the rest."""

    metrics: ClassVar[tuple[str, ...]] = ("top1", "top5")
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    #: Whether the method reads (rows, P, D) patch tokens (the attentive probe) instead of (rows, D) vectors.
    tokens: ClassVar[bool] = False

    def validate(self, train: ProbeData, val: ProbeData | None, inputs: Sequence[FeatureInput]
                 ) -> tuple[int, ProbeData | None]:
        from .data import validate_train_val
        from .inputs import stored_parts

        for data in (train, val):
            for part in stored_parts(inputs) if data is not None else ():
                data.require(FeatureInput((part,)))
                shape = data.features[part].shape
                if len(shape) != (3 if self.tokens else 2):
                    wanted = "(rows, P, D) patch tokens" if self.tokens else "one (D,) vector per row"
                    other = " (--method attentive reads patch tokens)" if not self.tokens else ""
                    raise ProbeDataError(f"{data.source}: feature {part!r} has shape {tuple(shape)}, but --method "
                                         f"{self.name} needs {wanted}{other}")
        return validate_train_val(train, val, inputs, self.chunk_rows)

    def evaluate(self, probe, val: ProbeData) -> tuple[dict[str, float], np.ndarray]:
        top1, top5, predictions = probe.evaluate(val)
        return {"top1": top1, "top5": top5}, predictions


class GridMethod(ClassificationMethod):
    """A classification method whose settings are one config (``self.config``) with an lr x weight-decay
    ``grid``, ``chunk_rows``, ``optimizer``, ``epochs``, ``batch_size`` and ``device`` (linear, attentive)."""

    config: Any

    @property
    def chunk_rows(self) -> int:
        return self.config.chunk_rows

    def check(self) -> None:
        self.config.check()

    def grid_size(self, inputs: Sequence[FeatureInput]) -> int:
        return len(inputs) * len(self.config.grid)

    def settings(self) -> dict:
        c = self.config
        return {"optimizer": c.optimizer, "epochs": c.epochs, "batch_size": c.batch_size, "device": str(c.device)}


#: Modules whose classes register probe methods with :func:`register_method`; imported on the first look-up
#: (as timm imports its model modules), so the registry is complete whoever asks first.
METHOD_MODULES = ("linear", "logreg", "knn", "attentive", "segmentation", "depth")
_REGISTRY: dict[str, type] = {}


def register_method(cls: type) -> type:
    """Class decorator: make ``cls`` (a ProbeMethod; its ``summary`` class attribute, one line, is its
    ``--method`` help) choosable by name."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"probe method {name!r} is registered twice ({_REGISTRY[name].__qualname__}, {cls.__qualname__})")
    _REGISTRY[name] = cls
    return cls


def registered_methods(task: str | None = None) -> dict[str, type]:
    """{name: ProbeMethod class} of every registered method (of ``task`` when given: ``classification``, the
    default of a class without ``task``, or ``segmentation``): the built-in ones in ``METHOD_MODULES`` order,
    then any other in registration order (whatever order the modules happened to be imported in)."""
    import importlib

    modules = [f"{__package__}.{module}" for module in METHOD_MODULES]
    for module in modules:
        importlib.import_module(module)
    rank = {cls: (modules.index(cls.__module__) if cls.__module__ in modules else len(modules), i)
            for i, cls in enumerate(_REGISTRY.values())}
    return {cls.name: cls for cls in sorted(_REGISTRY.values(), key=rank.__getitem__)
            if task is None or getattr(cls, "task", "classification") == task}


def method_class(name: str) -> type:
    """The ProbeMethod class called ``name``."""
    classes = registered_methods()
    if name not in classes:
        raise ProbeDataError(f"--method {name!r}: choose one of {', '.join(classes)}")
    return classes[name]


def methods_help(task: str | None = None) -> str:
    """Every registered method's name and summary, for ``--method``'s help."""
    return "; ".join(f"{name}: {getattr(cls, 'summary', cls.__doc__ or '').strip()}"
                     for name, cls in registered_methods(task).items())


def load_head(meta: Mapping, tensors: Mapping[str, np.ndarray], *, device: str = "cpu",
              bank: ProbeData | None = None) -> Head:
    """Rebuild a saved head from ``head.json`` fields and its tensors."""
    return method_class(meta["method"]).load_head(meta, tensors, device=device, bank=bank)


#: Metrics where lower is better (the depth errors); every other metric is better higher.
LOWER_IS_BETTER = frozenset({"abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog"})


def selection_key(row: Mapping, metrics: Sequence[str], prefix: str = "holdout_") -> tuple:
    """What selection maximises: each held-out metric in order, negated where lower is better
    (:data:`LOWER_IS_BETTER`), an undefined one (None) lowest."""
    def value(m: str) -> float:
        v = row[f"{prefix}{m}"]
        return -math.inf if v is None else (-v if m in LOWER_IS_BETTER else v)
    return tuple(value(m) for m in metrics)


def best_record(records: Sequence[dict], metrics: Sequence[str]) -> dict:
    """The record with the best held-out metrics (:func:`selection_key`, compared in order); the first such
    in grid order."""
    return max(records, key=lambda r: selection_key(r, metrics))


def record(name: str, method: str, feature_input: FeatureInput, scores: Mapping[str, float] | None,
           metrics: Sequence[str], **hyper) -> dict:
    """One grid point as written to ``grid.jsonl``."""
    return {"name": name, "method": method, "feature": feature_input.name, "parts": list(feature_input.parts),
            **hyper, **{f"holdout_{m}": None if scores is None else scores[m] for m in metrics}}
