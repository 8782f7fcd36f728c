"""The mmcv-lite placeholder and the trusted-checkpoint switch."""

from __future__ import annotations

import importlib
import os
import sys
import types

import pytest

from sail_vision.mmseg import compat


def test_placeholder_stands_in_for_missing_compiled_ops():
    if importlib.util.find_spec("mmcv._ext") is not None and not isinstance(
            sys.modules.get("mmcv._ext"), compat._MissingCompiledOps):
        pytest.skip("full mmcv with compiled ops is installed: nothing to replace")
    assert compat.install_mmcv_ext_placeholder()
    module = sys.modules["mmcv._ext"]
    assert isinstance(module.__spec__, importlib.machinery.ModuleSpec)
    assert module.__spec__.name == "mmcv._ext"
    assert not compat.compiled_ops_available()
    import mmseg.models  # noqa: F401  (fails with "No module named 'mmcv._ext'" without the shim)
    with pytest.raises(RuntimeError, match="mmcv-lite"):
        module.nms(None)


def test_real_compiled_ops_are_left_alone(monkeypatch):
    real = types.ModuleType("mmcv._ext")
    monkeypatch.setitem(sys.modules, "mmcv._ext", real)
    assert compat.compiled_ops_available()
    assert not compat.install_mmcv_ext_placeholder()
    assert sys.modules["mmcv._ext"] is real


def test_trusted_checkpoint_loading_is_scoped(monkeypatch):
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    with compat.trusted_checkpoint_loading():
        assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "0")
    with pytest.raises(KeyError):
        with compat.trusted_checkpoint_loading():
            raise KeyError("boom")
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "0"
