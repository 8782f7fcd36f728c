"""Make mmsegmentation usable on this project's stack (see docs/segmentation.md, "Compatibility").

Importing this module (``sail_vision.mmseg`` and ``tools/*.py`` do it before touching mmseg)
on **mmcv-lite** (no compiled ops) registers a placeholder ``mmcv._ext`` module, because
mmseg 1.2.2 imports ``mmcv.ops`` unconditionally in a few modules although the models used
here need no compiled op. The placeholder has a real ``ModuleSpec`` (mmengine probes modules
with pkgutil) and any compiled op raises a clear error when called. With full mmcv (the
compiled ``mmcv._ext`` exists) nothing is touched.

It also provides :func:`trusted_checkpoint_loading`, which the tools wrap around the loading of
the mmengine checkpoints the user names (torch>=2.6 loads with ``weights_only=True`` by default,
which rejects them).
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import types
import warnings
from contextlib import contextmanager

from ..errors import SailVisionError

_EXT = "mmcv._ext"


class MMSegUnavailableError(SailVisionError):
    """mmsegmentation (or mmengine / mmcv) is not installed."""


class _MissingCompiledOps(types.ModuleType):
    """Stands in for ``mmcv._ext`` on mmcv-lite; every compiled op raises when used."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def unavailable(*args, **kwargs):
            raise RuntimeError(f"mmcv compiled op {name!r} is not available: this is mmcv-lite. "
                               f"Install full mmcv (with ops) to use models that need it.")

        return unavailable


def compiled_ops_available() -> bool:
    """True when a real compiled ``mmcv._ext`` is importable (full mmcv)."""
    module = sys.modules.get(_EXT)
    if module is not None:
        return not isinstance(module, _MissingCompiledOps)
    try:
        return importlib.util.find_spec(_EXT) is not None
    except ModuleNotFoundError:  # mmcv itself is absent
        return False


def install_mmcv_ext_placeholder() -> bool:
    """Register the placeholder when (and only when) mmcv is installed without compiled ops.

    Returns True if the placeholder is (now) in place.
    """
    if isinstance(sys.modules.get(_EXT), _MissingCompiledOps):
        return True
    if importlib.util.find_spec("mmcv") is None or compiled_ops_available():
        return False
    module = _MissingCompiledOps(_EXT, "placeholder for mmcv's compiled ops (absent on mmcv-lite)")
    module.__spec__ = importlib.machinery.ModuleSpec(_EXT, loader=None, origin="sail_vision.mmseg.compat")
    module.__file__ = __file__
    sys.modules[_EXT] = module
    return True


_NO_WEIGHTS_ONLY = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"


@contextmanager
def trusted_checkpoint_loading():
    """Inside this block ``torch.load`` defaults to ``weights_only=False``.

    mmengine checkpoints pickle numpy arrays and ``HistoryBuffer`` objects whose statistics are
    bound methods (stored through ``builtins.getattr``), which torch>=2.6's safe loader rejects;
    allow-listing ``getattr`` would make safe loading meaningless. So the tools load the
    checkpoints the user names (``--resume``, ``load_from``, ``tools/test.py CHECKPOINT``,
    ``init_model``) inside this block, through torch's own switch
    (``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``), restored on exit. Like any ``.pth`` file, only load
    checkpoints you trust (your own training runs).
    """
    previous = os.environ.get(_NO_WEIGHTS_ONLY)
    os.environ[_NO_WEIGHTS_ONLY] = "1"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD.*")
            yield
    finally:
        if previous is None:
            os.environ.pop(_NO_WEIGHTS_ONLY, None)
        else:
            os.environ[_NO_WEIGHTS_ONLY] = previous


def ensure_mmseg() -> None:
    """Install the placeholder if needed and check mmseg imports; a one-line error if it cannot."""
    install_mmcv_ext_placeholder()
    try:
        import mmseg  # noqa: F401
        import mmengine  # noqa: F401
    except ImportError as exc:
        raise MMSegUnavailableError(
            f"mmsegmentation is not usable ({exc}); install it with `pip install "
            f"'mmsegmentation==1.2.2' 'mmengine==0.10.7' 'mmcv-lite==2.1.0' 'setuptools<81'` "
            f"(or full mmcv 2.1.0 on GPU machines)") from None


install_mmcv_ext_placeholder()
