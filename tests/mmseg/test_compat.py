"""The mmcv-lite stand-in (sail_vision_mmcv_lite + its start-up hook) and the one-line 'not installed' errors."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import sail_vision_mmcv_lite
from sail_vision.mmseg import compat

# Start of a program in which the packages in `blocked` look uninstalled (find_spec -> None, import fails).
_BLOCK = "import sys\nfor _name in {blocked!r}:\n    sys.modules[_name] = None\n"


def _python(code: str, *args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=180, cwd=cwd)


def test_stand_in_is_used_for_missing_compiled_ops():
    if compat.compiled_ops_available():
        pytest.skip("full mmcv with compiled ops is installed: nothing to stand in for")
    module = sys.modules.get("mmcv._ext") or importlib.import_module("mmcv._ext")
    assert sail_vision_mmcv_lite.is_placeholder(module)
    assert module.__spec__.name == "mmcv._ext" and module.__spec__.loader is None
    import mmseg.models  # noqa: F401  (fails with "No module named 'mmcv._ext'" without the stand-in)
    from mmengine.utils.dl_utils import mmcv_full_available

    assert not mmcv_full_available()  # nothing mistakes the stand-in for full mmcv
    with pytest.raises(RuntimeError, match="mmcv-lite"):
        module.nms(None)


def test_first_import_of_mmseg_apis_works_in_a_fresh_interpreter():
    """The start-up hook (sail_vision_mmcv_lite.pth, installed with the package) needs no import first."""
    proc = _python("from mmseg.apis import MMSegInferencer, inference_model, init_model; import mmseg.models; "
                   "import sys; print(type(sys.modules['mmcv._ext']).__name__)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = "module" if compat.compiled_ops_available() else "MissingCompiledOps"
    assert proc.stdout.split()[-1] == expected


def test_a_real_compiled_module_is_never_shadowed(tmp_path):
    """The finder sits last on sys.meta_path: an mmcv that has its own _ext keeps it."""
    package = tmp_path / "mmcv"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "_ext.py").write_text("REAL = True\n")
    code = ("import sys, sail_vision_mmcv_lite; sys.path.insert(0, sys.argv[1]); sail_vision_mmcv_lite.install(); "
            "import mmcv._ext; print('REAL' in vars(mmcv._ext), "
            "sail_vision_mmcv_lite.is_placeholder(mmcv._ext))")
    proc = _python(code, str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "False"]
    (package / "_ext.py").unlink()  # mmcv-lite: no compiled module -> the stand-in
    proc = _python(code, str(tmp_path))
    assert proc.stdout.split() == ["False", "True"], proc.stderr


def test_install_is_idempotent():
    finder = sail_vision_mmcv_lite.install()
    assert sail_vision_mmcv_lite.install() is finder
    assert sum(isinstance(f, sail_vision_mmcv_lite.MissingCompiledOpsFinder) for f in sys.meta_path) == 1


@pytest.mark.parametrize("blocked, expected", [
    (("mmseg",), "needs mmsegmentation, which is not installed: pip install 'sail-vision[mmseg]'"),
    (("mmengine",), "needs mmengine, which is not installed: pip install 'sail-vision[mmseg]'"),
    (("mmcv",), "needs mmcv, which is not installed: install mmcv 2.1.0: `pip install mmcv-lite==2.1.0`"),
])
def test_missing_packages_are_one_line_errors(blocked, expected, tmp_path):
    """A plain `pip install sail-vision` (no [mmseg] extra, no mmcv): the CLI and the tools say what to install."""
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    code = _BLOCK.format(blocked=set(blocked)) + textwrap.dedent(f"""
        import sail_vision                      # the core needs none of them
        from sail_vision.cli import main
        sys.exit(main(['segment', {str(image)!r}, '--config', 'c.py', '--checkpoint', 'w.pth', '--out', 'o.png']))
    """)
    proc = _python(code, cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("sail-vision segment: error: the mmseg integration") and expected in lines[0]

    train = Path(__file__).resolve().parents[2] / "tools" / "train.py"
    proc = _python(_BLOCK.format(blocked=set(blocked)) + f"import runpy; sys.argv = [{str(train)!r}, 'c.py']; "
                   f"runpy.run_path({str(train)!r}, run_name='__main__')", cwd=tmp_path)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("train.py: error: the mmseg integration") and expected in lines[0]


def test_an_mmcv_version_mmseg_rejects_is_a_one_line_error(monkeypatch):
    import mmcv

    for name in [m for m in sys.modules if m == "mmseg" or m.startswith("mmseg.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(mmcv, "__version__", "2.2.0")
    with pytest.raises(compat.MMSegUnavailableError, match=r"MMCV==2.2.0 is used but incompatible.*mmcv-lite==2.1.0"):
        compat.ensure_mmseg()
