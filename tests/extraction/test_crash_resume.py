"""A real `sail-vision extract` process killed with SIGKILL mid-run, then resumed, gives the bytes
of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sail_vision.extraction import extract
from sail_vision.extraction.encoding import DELAY_ENV
from sail_vision.extraction.planning import status_files
from sail_vision.feature_store import PARTS_DIR
from sail_vision.extraction.writer import DONE, PENDING

from feature_dirs import compare_feature_dirs
from image_factory import save_rgb, write_bad_inputs

OPTIONS = ["--layers", "1", "-1", "--pool", "patch", "mean", "end", "--batch-size", "2", "--workers", "1",
           "--commit-interval", "0.1", "--no-progress", "--allow-failures"]


def _dataset(root):
    for c, name in enumerate(["n01000000", "n02000000"]):
        for i in range(12):
            save_rgb(root / name / f"{i:02d}.png", (16, 24, 32)[i % 3], 16, seed=100 * c + i)
    bad = write_bad_inputs(root / "tmp")
    (root / "n01000000" / "05.png").write_bytes(bad["truncated"].read_bytes())  # one failure mid-run
    for path in bad.values():
        path.unlink()
    (root / "tmp").rmdir()


def _rows_done(out) -> tuple[int, int]:
    """(rows finished, rows pending) over the committed parts and the parts being extracted."""
    done = pending = 0
    parts = out / PARTS_DIR
    for folder in sorted(parts.glob("part-*")) if parts.is_dir() else []:
        done += int(np.load(folder / "valid.npy").size)
    for work in sorted(parts.glob(".part-*.partial")) if parts.is_dir() else []:
        files = status_files(work)
        if files:
            status = np.maximum.reduce([np.load(f) for f in files])
            done, pending = done + int((status == DONE).sum()), pending + int((status == PENDING).sum())
    return done, pending


@pytest.mark.parametrize("part_size", [None, 5])
def test_sigkill_then_resume_is_byte_identical(tiny_checkpoint, tmp_path, part_size):
    images = tmp_path / "train"
    _dataset(images)
    out = tmp_path / "killed"
    parts = [] if part_size is None else ["--part-size", str(part_size)]
    command = [sys.executable, "-m", "sail_vision", "extract", "--checkpoint", str(tiny_checkpoint),
               "--images", str(images), "--out", str(out), *OPTIONS, *parts]
    process = subprocess.Popen(command, env={**os.environ, DELAY_ENV: "0.25"}, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    done = 0
    while done < 7:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "extraction did not make progress"
        time.sleep(0.05)
        try:
            done, _ = _rows_done(out)
        except (ValueError, OSError):  # a status file is being created, a part being committed
            continue
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 24 - _rows_done(out)[0] > 6, "killed too late to test resuming"

    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert "extracted 24 images (23 ok, 1 failed)" in resumed.stdout
    assert not (out / PARTS_DIR).exists()

    reference = tmp_path / "reference"
    extract(tiny_checkpoint, images, reference, layers=[1, -1], pools=["patch", "mean", "end"], batch_size=2,
            workers=0, progress=False, **({} if part_size is None else {"part_size": part_size}))
    compare_feature_dirs(out, reference)
