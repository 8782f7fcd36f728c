"""`torchrun --nproc_per_node=2` (gloo on CPU): the ranks take parts and write the same bytes as one process."""

from __future__ import annotations

import subprocess
import sys

from sail_vision.extraction import extract

from feature_dirs import compare_feature_dirs
from image_factory import save_rgb, write_bad_inputs


def test_two_processes_equal_one(tiny_checkpoint, tmp_path):
    images = tmp_path / "images"
    for i in range(11):
        save_rgb(images / f"{i:02d}.png", (16, 40, 24)[i % 3], (16, 24)[i % 2], seed=i)
    (images / "03.png").write_bytes(write_bad_inputs(tmp_path / "bad")["corrupt"].read_bytes())
    out = tmp_path / "two"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "--module", "sail_vision", "extract", "--checkpoint", str(tiny_checkpoint), "--images", str(images),
               "--out", str(out), "--layers", "2", "-1", "--pool", "patch", "mean", "cls", "--batch-size", "2",
               "--part-size", "3", "--workers", "0", "--no-progress"]  # 4 parts: 2 per rank
    run = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert run.returncode == 1, run.stderr  # one image failed and --allow-failures was not given
    assert "on 2 processes" in run.stdout and "1 image(s) failed (1 corrupt)" in run.stderr
    reference = tmp_path / "one"
    extract(tiny_checkpoint, images, reference, layers=[2, -1], pools=["patch", "mean", "cls"], batch_size=2,
            part_size=3, workers=0, progress=False)
    compare_feature_dirs(out, reference)


def test_a_rank_that_stops_stops_every_rank_cleanly(tiny_checkpoint, tmp_path):
    """--strict on rank 1's bad image: both ranks exit with the reason, none waits for a collective's timeout."""
    images = tmp_path / "images"
    for i in range(6):
        save_rgb(images / f"{i:02d}.png", 16, 16, seed=i)
    # parts of one image go to ranks 0, 1, 0, 1, ...: image 03 is rank 1's
    good = (images / "03.png").read_bytes()
    (images / "03.png").write_bytes(good[: len(good) // 2])  # header intact, pixel data truncated
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "--module", "sail_vision", "extract", "--checkpoint", str(tiny_checkpoint), "--images", str(images),
               "--out", str(tmp_path / "out"), "--batch-size", "1", "--part-size", "1", "--workers", "0", "--no-progress",
               "--strict"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0
    ours = [line for line in run.stderr.splitlines() if line.startswith("sail-vision extract: error: ")]
    assert len(ours) == 2 and all("03.png" in line for line in ours), run.stderr[-3000:]  # one line per rank
    told = [line for line in ours if "rank 1 stopped: " in line]  # rank 0's line; torchrun's own report follows
    assert len(told) == 1 and "--resume" in told[0], ours
    (images / "03.png").write_bytes(good)
    result = extract(tiny_checkpoint, images, tmp_path / "out", batch_size=1, part_size=1, workers=0,
                     progress=False, resume=True, strict=True)
    assert (result.num_valid, result.num_failed) == (6, 0)
