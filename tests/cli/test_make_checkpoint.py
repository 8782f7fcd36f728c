"""`sail-vision make-checkpoint` and `sail-vision info` from the command line."""

import subprocess
import sys

from sail_vision import SailEncoder
from sail_vision.cli import main


def test_make_checkpoint_then_load(tmp_path, capsys):
    out = tmp_path / "ck"
    assert main(["make-checkpoint", "--out", str(out), "--set", "num_hidden_layers=2", "--seed", "3"]) == 0
    encoder = SailEncoder.from_pretrained(out)
    assert encoder.num_layers == 2
    assert main(["info", str(out), "--max-layer", "1"]) == 0
    text = capsys.readouterr().out
    assert "num_hidden_layers: 2" in text and "max_layer=1 reads" in text


def test_errors_are_one_line_without_traceback(tmp_path):
    out = tmp_path / "ck"
    out.mkdir()
    (out / "junk").write_text("x")
    proc = subprocess.run([sys.executable, "-m", "sail_vision", "make-checkpoint", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "already exists and is not empty" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "sail_vision", "info", str(tmp_path / "none")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "not a directory" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "sail_vision", "make-checkpoint", "--out", str(tmp_path / "y"),
                           "--set", "bogus_field=3"], capture_output=True, text=True)
    assert proc.returncode == 2 and "bogus_field" in proc.stderr and "Traceback" not in proc.stderr


def test_help_lists_commands():
    proc = subprocess.run([sys.executable, "-m", "sail_vision", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "make-checkpoint" in proc.stdout
