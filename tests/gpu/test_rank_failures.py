"""An exception on any torchrun rank ends every rank promptly with that rank's message (gloo on CPU)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from image_factory import save_rgb


def test_rank_1_failing_before_its_first_part_ends_rank_0_with_its_message(tiny_checkpoint, tmp_path):
    images = tmp_path / "images"
    for i in range(6):
        save_rgb(images / f"{i:02d}.png", 16, 16, seed=i)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               str(Path(__file__).with_name("rank_fault.py")), "--checkpoint", str(tiny_checkpoint),
               "--images", str(images), "--out", str(tmp_path / "out"), "--batch-size", "1", "--part-size", "1",
               "--workers", "0", "--no-progress", "--device", "cpu"]  # gloo: runs on a one-GPU machine too
    started = time.monotonic()
    run = subprocess.run(command, capture_output=True, text=True, timeout=150)
    assert run.returncode != 0 and time.monotonic() - started < 150
    ours = [line for line in run.stderr.splitlines() if line.startswith("sail-vision extract: error: ")]
    told = [line for line in ours if "rank 1 stopped before its first part: OSError: rank 1 cannot read the plan"
            in line]
    assert len(told) == 1, run.stderr[-3000:]  # rank 0 ends with rank 1's message
    assert "OSError: rank 1 cannot read the plan: stale file handle" in run.stderr  # rank 1's own traceback
