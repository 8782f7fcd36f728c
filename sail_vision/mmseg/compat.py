"""Make mmsegmentation importable on this project's stack, or say in one line why it is not.

- **mmcv-lite**: mmseg 1.2.2 imports ``mmcv.ops`` in a few modules although the models used here
  need no compiled op. :mod:`sail_vision_mmcv_lite` (installed with sail-vision, and run at
  interpreter start-up by ``sail_vision_mmcv_lite.pth``) supplies a stand-in ``mmcv._ext`` when,
  and only when, the compiled one is absent; importing this module installs it as well, for
  source checkouts that were not pip-installed.
- **not installed**: :func:`ensure_mmseg` turns a missing mmseg / mmengine / mmcv, or an mmcv
  version mmseg rejects, into :class:`MMSegUnavailableError` naming what to install.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys

import sail_vision_mmcv_lite

from ..errors import SailVisionError

_EXT = sail_vision_mmcv_lite.EXT_NAME
_INSTALL_MMCV = ("install mmcv 2.1.0: `pip install mmcv-lite==2.1.0` on a CPU machine, or the full mmcv 2.1.0 "
                 "built for your torch and CUDA on a GPU machine (see the README, Installing)")


class MMSegUnavailableError(SailVisionError):
    """mmsegmentation, mmengine or mmcv is missing or unusable."""


def compiled_ops_available() -> bool:
    """True when mmcv is installed with its compiled ``mmcv._ext`` (full mmcv, not mmcv-lite)."""
    module = sys.modules.get(_EXT)
    if module is not None:
        return not sail_vision_mmcv_lite.is_placeholder(module)
    mmcv = importlib.util.find_spec("mmcv")
    if mmcv is None or not mmcv.submodule_search_locations:
        return False
    return importlib.machinery.PathFinder.find_spec(_EXT, list(mmcv.submodule_search_locations)) is not None


def ensure_mmseg() -> None:
    """Install the mmcv-lite stand-in and import mmseg; a one-line error saying what to install if that fails."""
    sail_vision_mmcv_lite.install()
    for name, advice in (("mmengine", "pip install 'sail-vision[mmseg]'"),
                         ("mmsegmentation", "pip install 'sail-vision[mmseg]'"),
                         ("mmcv", _INSTALL_MMCV)):
        module = "mmseg" if name == "mmsegmentation" else name
        if importlib.util.find_spec(module) is None:
            raise MMSegUnavailableError(f"the mmseg integration needs {name}, which is not installed: {advice}")
    try:
        import mmseg  # noqa: F401  (checks the mmcv version)
        import mmseg.registry  # noqa: F401
    except (ImportError, AssertionError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise MMSegUnavailableError(f"mmsegmentation cannot be imported ({message}); {_INSTALL_MMCV}, with "
                                    f"mmengine 0.10.x and mmsegmentation 1.2.x") from None


sail_vision_mmcv_lite.install()
