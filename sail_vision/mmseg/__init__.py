"""mmsegmentation integration.

Importing this package registers, in mmseg's / mmengine's registries:

- ``SAILBackbone``, ``SAILLinearHead`` and ``SAILLinearDepthHead`` (MODELS);
- ``SyntheticColourDataset`` (DATASETS), the demo's synthetic data;
- the classification probe under mmengine (:mod:`sail_vision.mmseg.classification`):
  ``LinearProbeClassifier``, ``ExtractedFeatureDataset``, ``ProbeAccuracy``;
- ``WeightsOnlyCheckpointHook`` (HOOKS) and a loader for local checkpoint files that only
  loads with ``torch.load(weights_only=True)`` (see :mod:`sail_vision.mmseg.checkpoints`).

``import sail_vision`` registers them too when mmseg is already imported; it never imports mmseg
itself, so users who never segment keep a fast import. Configs pull this package in with
``custom_imports = dict(imports=['sail_vision.mmseg'], allow_failed_imports=False)``
(configs/_base_/default_runtime.py does). Without mmseg / mmcv installed, importing it raises
:class:`~sail_vision.mmseg.compat.MMSegUnavailableError`, one line saying what to install.
Other submodules: ``inference`` (load a trained segmentor, segment an image, draw an overlay),
``launch`` (what tools/train.py and tools/test.py share) and ``config_checks``.
"""

from .compat import ensure_mmseg

ensure_mmseg()
from .backbone import SAILBackbone  # noqa: E402
from .checkpoints import WeightsOnlyCheckpointHook  # noqa: E402
from . import classification  # noqa: E402,F401  (the classification probe: model, dataset, metric)
from .datasets import SyntheticColourDataset  # noqa: E402
from .depth import SAILLinearDepthHead  # noqa: E402
from .heads import SAILLinearHead  # noqa: E402

__all__ = ["SAILBackbone", "SAILLinearDepthHead", "SAILLinearHead", "SyntheticColourDataset",
           "WeightsOnlyCheckpointHook"]
