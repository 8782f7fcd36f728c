"""A stand-in for mmcv's compiled ops on mmcv-lite, so ``import mmseg.models`` works as a first import.

mmsegmentation 1.2.2 imports ``mmcv.ops`` in a few modules (point_sample, focal_loss, san_head...)
even for models that need no compiled op; on mmcv-lite, which has no ``mmcv._ext``, that import
fails with ``No module named 'mmcv._ext'``. :func:`install` appends a finder to ``sys.meta_path``:
the finder is asked only after every normal finder failed to find ``mmcv._ext``, so it never
shadows the compiled module of a full mmcv (nor hides the error of a broken one), and it answers
for that one name only. The module it supplies has no ops: calling any of them raises an error
that says to install full mmcv.

sail-vision installs ``sail_vision_mmcv_lite.pth`` beside this module in site-packages, which calls
:func:`install` when Python starts; ``sail_vision.mmseg`` calls it too. It imports only standard
library modules that Python has already loaded, so the start-up cost is about a millisecond. It
lives outside the ``sail_vision`` package because importing that package would import torch at
every interpreter start.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

EXT_NAME = "mmcv._ext"


class MissingCompiledOps(types.ModuleType):
    """Stands in for ``mmcv._ext`` on mmcv-lite; every compiled op raises when called."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"mmcv compiled op {name!r} is not available: this is mmcv-lite. Install full "
                               f"mmcv 2.1.0 (with ops, built for your torch) to use models that need it.")

        unavailable.__name__ = name
        return unavailable


class MissingCompiledOpsFinder:
    """Finds ``mmcv._ext`` only when no other finder did (it sits last on ``sys.meta_path``).

    Finder and loader in one (the two protocols' methods; importlib.abc is not imported because
    it costs milliseconds at every interpreter start)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != EXT_NAME:
            return None
        return importlib.machinery.ModuleSpec(EXT_NAME, self, origin=__name__)

    def create_module(self, spec):
        return MissingCompiledOps(spec.name, "placeholder for mmcv's compiled ops (absent on mmcv-lite)")

    def exec_module(self, module):
        # Once imported, report "no loader" as mmcv-lite does, so mmengine's mmcv_full_available()
        # (pkgutil.find_loader('mmcv._ext')) stays False and nothing treats the placeholder as full mmcv.
        module.__spec__ = importlib.machinery.ModuleSpec(EXT_NAME, None, origin=__name__)


def install() -> MissingCompiledOpsFinder:
    """Append the finder to ``sys.meta_path`` (once) and return it."""
    for finder in sys.meta_path:
        if isinstance(finder, MissingCompiledOpsFinder):
            return finder
    finder = MissingCompiledOpsFinder()
    sys.meta_path.append(finder)
    return finder


def is_placeholder(module) -> bool:
    """True if ``module`` is this stand-in (not a real compiled ``mmcv._ext``)."""
    return isinstance(module, MissingCompiledOps)
