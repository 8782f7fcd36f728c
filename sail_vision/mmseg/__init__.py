"""mmsegmentation integration: ``SAILBackbone`` and ``SAILLinearHead`` in ``mmseg.registry.MODELS``.

Importing this package registers them (so does ``import sail_vision`` when mmseg is already
imported). ``import sail_vision`` never imports mmseg itself, so
users who never segment keep a fast import; configs pull this package in with
``custom_imports = dict(imports=['sail_vision.mmseg'], allow_failed_imports=False)``
(configs/_base_/default_runtime.py does) and Python code does ``import sail_vision.mmseg``.
The mmcv-lite fix in :mod:`sail_vision.mmseg.compat` is applied first. Submodules:
``inference`` (load a trained segmentor, segment an image, draw an overlay) and ``synthetic``
(the demo's random checkpoint and synthetic ADE20K-layout dataset).
"""

from . import compat  # noqa: F401  (must run before mmseg is imported)
from .backbone import SAILBackbone
from . import classification  # noqa: F401  (registers the classification probe: model, dataset, metric)
from .heads import SAILLinearHead

__all__ = ["SAILBackbone", "SAILLinearHead"]
