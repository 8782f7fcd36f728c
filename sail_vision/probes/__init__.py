"""Classification probes on extracted features: a one-pass grid of linear heads, scikit-learn's
logistic regression (CLIP protocol) and cosine k-NN (DINOv2 protocol), with honest selection of
hyper-parameters on a split held out from the training features.

Entry points: :func:`run_probe` (``sail-vision probe``), :func:`load_probe` (saved best head ->
predictions), and :mod:`sail_vision.probes.mmseg_registry` (the same probe under mmengine's Runner).
"""

from .data import FeatureInput, ProbeData, ProbeDataError, load_arrays, load_feature_dir, parse_feature_inputs

_LAZY = {"run_probe": "runner", "ProbeResult": "runner", "load_probe": "results", "LoadedProbe": "results"}

__all__ = ["FeatureInput", "ProbeData", "ProbeDataError", "load_arrays", "load_feature_dir",
           "parse_feature_inputs", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
