"""Importing sail_vision after mmseg registers the segmentation modules."""

import subprocess
import sys


def test_import_after_mmseg_registers_and_plain_import_stays_light():
    code = ("import mmseg.registry, sys; "
            "assert 'sail_vision.mmseg' not in sys.modules; import sail_vision; "
            "from mmseg.registry import MODELS; "
            "assert MODELS.get('SAILBackbone') is not None and MODELS.get('SAILLinearHead') is not None")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([sys.executable, "-c", "import sail_vision, sys; assert 'mmseg' not in sys.modules"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
