"""`torchrun --nproc_per_node=2` (gloo on CPU) writes the same bytes as one process."""

from __future__ import annotations

import subprocess
import sys

from sail_vision.extraction import extract

from image_factory import save_rgb, write_bad_inputs
from .test_crash_resume import _compare


def test_two_processes_equal_one(tiny_checkpoint, tmp_path):
    images = tmp_path / "images"
    for i in range(11):
        save_rgb(images / f"{i:02d}.png", (16, 40, 24)[i % 3], (16, 24)[i % 2], seed=i)
    (images / "03.png").write_bytes(write_bad_inputs(tmp_path / "bad")["corrupt"].read_bytes())
    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "--module", "sail_vision", "extract", "--checkpoint", str(tiny_checkpoint), "--images", str(images),
               "--out", str(out), "--layers", "2", "-1", "--pool", "patch", "mean", "cls", "--batch-size", "2",
               "--workers", "0", "--no-progress"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert run.returncode == 1, run.stderr  # one image failed and --allow-failures was not given
    assert "on 2 processes" in run.stdout and "1 image(s) failed (1 corrupt)" in run.stderr
    reference = tmp_path / "one"
    extract(tiny_checkpoint, images, reference, layers=[2, -1], pools=["patch", "mean", "cls"], batch_size=2,
            workers=0, progress=False)
    _compare(out, reference)
