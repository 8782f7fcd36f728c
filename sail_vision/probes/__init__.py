"""Probes on extracted features, all through one runner: a one-pass grid of linear heads, scikit-learn's
logistic regression (CLIP protocol), cosine k-NN (DINOv2 protocol), AIM's attentive probe on patch tokens
DINOv2's linear segmentation head and its linear depth head, with honest selection of hyper-parameters on a split held out
from the training features, few-shot intervals and named protocols.

Modules, in the order data flows through them: :mod:`.inputs` (which features a head reads),
:mod:`.data` (the only reader of feature folders; labels and class names), :mod:`.standardize`,
:mod:`.streaming` (chunks onto the device), :mod:`.methods` (the ``ProbeMethod`` interface and the
registry) with :mod:`.linear`, :mod:`.logreg`, :mod:`.knn`, :mod:`.attentive`, :mod:`.segmentation`
(and its ``seg_*`` modules), :mod:`.depth` (with :mod:`.depth_train`, :mod:`.depth_metrics` and the head,
:mod:`.depth_head`), :mod:`.metrics`, :mod:`.runner` (``run_probe``), :mod:`.fewshot`,
:mod:`.protocols`, :mod:`.results` (output folder, saved heads), :mod:`.predict`, :mod:`.plot` and
:mod:`.report`. The same linear probe under mmengine's Runner lives in
:mod:`sail_vision.mmseg.classification`.
"""

from .data import ProbeData, load_arrays, load_feature_dir
from .errors import ProbeDataError
from .inputs import FeatureInput, parse_feature_inputs

_LAZY = {"run_probe": "runner", "build_method": "runner", "ProbeResult": "runner", "load_probe": "results",
         "LoadedProbe": "results", "predict_features": "predict", "ProbeMethod": "methods",
         "Standardizer": "standardize"}

__all__ = ["FeatureInput", "ProbeData", "ProbeDataError", "load_arrays", "load_feature_dir",
           "parse_feature_inputs", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
