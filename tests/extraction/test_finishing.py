"""Finishing is idempotent: the end of a run (the join of the parts, the manifest, the removal of
parts/ and working files) killed at any of its points is completed by any rerun (``extract --resume``
or ``sail-vision consolidate``) with the same bytes; files sail-vision did not write under parts/ are
refused by name and never deleted; the free-space check covers the join."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from sail_vision.extraction import extract
from sail_vision.feature_store import PARTS_DIR, STATE_DIR, FeatureStoreError, open_feature_dir, read_manifest

from feature_dirs import compare_feature_dirs, extract_command, kill, start_paused

from .test_parts import OPTIONS, images, reference  # noqa: F401 - the same ten images, parts of 3

CLI_OPTIONS = ["--layers", "1", "-1", "--pool", "patch", "mean", "--batch-size", 2, "--workers", 0, "--part-size", 3,
               "--no-progress", "--allow-failures"]
#: Points of the join and the final cleanup (each first reached after every part is committed).
END_POINTS = ["extract:consolidate", "atomic-write:layer-1_patch.npy", "extract:joined", "extract:remove-parts",
              "extract:removing-parts"]


def _consolidate_command(folder) -> list[str]:
    return [sys.executable, "-m", "sail_vision", "consolidate", str(folder)]


def _assert_finished(out, reference):
    assert not (out / PARTS_DIR).exists() and not (out / STATE_DIR).exists()
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert read_manifest(out)["parts"]["consolidated"] is True
    compare_feature_dirs(out, reference)


@pytest.mark.parametrize("rerun", ["resume", "consolidate"])
@pytest.mark.parametrize("point", END_POINTS)
def test_killed_while_joining_or_cleaning_up_then_any_rerun_finishes(tiny_checkpoint, images, reference, tmp_path,
                                                                    point, rerun):
    out = tmp_path / "killed"
    command = extract_command("--checkpoint", tiny_checkpoint, "--images", images, "--out", out, *CLI_OPTIONS)
    kill(start_paused(command, point, tmp_path / "marker"))
    again = command + ["--resume"] if rerun == "resume" else _consolidate_command(out)
    finished = subprocess.run(again, capture_output=True, text=True, timeout=180)
    assert finished.returncode == 0, finished.stderr
    _assert_finished(out, reference)


@pytest.mark.parametrize("point", END_POINTS)
def test_consolidate_killed_at_any_point_then_rerun(tiny_checkpoint, images, reference, tmp_path, point):
    out = tmp_path / "parted"
    extract(tiny_checkpoint, images, out, **OPTIONS, consolidate=False)
    kill(start_paused(_consolidate_command(out), point, tmp_path / "marker"))
    finished = subprocess.run(_consolidate_command(out), capture_output=True, text=True, timeout=180)
    assert finished.returncode == 0, finished.stderr
    _assert_finished(out, reference)


def test_files_under_parts_that_sail_vision_did_not_write_are_refused_and_kept(tiny_checkpoint, images, reference,
                                                                               tmp_path):
    out = tmp_path / "parted"
    extract(tiny_checkpoint, images, out, **OPTIONS, consolidate=False)
    notes, inside = out / PARTS_DIR / "notes.txt", out / PARTS_DIR / "part-00001" / "mine.npy"
    notes.write_text("keep me")
    inside.write_bytes(b"mine")
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    for command in (_consolidate_command(out),
                    extract_command("--checkpoint", tiny_checkpoint, "--images", images, "--out", out, *CLI_OPTIONS,
                                    "--resume")):
        result = subprocess.run(command, capture_output=True, text=True, timeout=180)
        assert result.returncode == 2, result.stdout + result.stderr
        err = result.stderr.strip().splitlines()
        assert len(err) == 1 and "notes.txt" in err[0] and "part-00001/mine.npy" in err[0], err
        assert "nothing was deleted" in err[0]
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == before
    notes.unlink()
    inside.unlink()
    assert subprocess.run(_consolidate_command(out), capture_output=True, timeout=180).returncode == 0
    _assert_finished(out, reference)


def test_a_consolidated_folder_with_leftover_foreign_files_under_parts_keeps_them(tiny_checkpoint, images, tmp_path):
    """Killed after the manifest says consolidated, then a user file appears under parts/: refused, kept."""
    out = tmp_path / "killed"
    command = extract_command("--checkpoint", tiny_checkpoint, "--images", images, "--out", out, *CLI_OPTIONS)
    kill(start_paused(command, "extract:joined", tmp_path / "marker"))
    (out / PARTS_DIR / "keep.txt").write_text("mine")
    result = subprocess.run(_consolidate_command(out), capture_output=True, text=True, timeout=180)
    assert result.returncode == 2 and "keep.txt" in result.stderr
    assert (out / PARTS_DIR / "keep.txt").read_text() == "mine"
    assert open_feature_dir(out).consolidated  # the features themselves are finished and readable


def test_free_space_check_covers_the_join_before_any_part_is_extracted(tiny_checkpoint, images, reference, tmp_path,
                                                                      monkeypatch):
    joined = sum(f.stat().st_size for f in reference.glob("layer-*.npy"))
    out = tmp_path / "tasks"
    extract(tiny_checkpoint, images, out, **OPTIONS, num_tasks=2, task_index=0)  # parts 0 and 2 committed
    real = shutil.disk_usage
    # room for the two remaining parts, not for them and the joined copy of every part
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=joined))
    with pytest.raises(FeatureStoreError, match=r"the remaining parts and their join need .* more but only"):
        extract(tiny_checkpoint, images, out, **OPTIONS, num_tasks=2, task_index=1)
    assert not (out / PARTS_DIR / "part-00001").exists() and not (out / PARTS_DIR / ".part-00001.partial").exists()
    monkeypatch.setattr(shutil, "disk_usage", real)
    extract(tiny_checkpoint, images, out, **OPTIONS, num_tasks=2, task_index=1)
    _assert_finished(out, reference)


def test_a_fresh_run_counts_the_join_from_its_settings(tiny_checkpoint, images, tmp_path, monkeypatch):
    """At a fixed resolution the bytes per row are known before any part is planned."""
    fixed = {**OPTIONS, "resolution": 16}
    reference = tmp_path / "fixed"
    extract(tiny_checkpoint, images, reference, **fixed)
    joined = sum(f.stat().st_size for f in reference.glob("layer-*.npy"))
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=joined * 3 // 2))
    out = tmp_path / "fresh"
    with pytest.raises(FeatureStoreError, match=r"the remaining parts and their join need (.*) more but only"):
        extract(tiny_checkpoint, images, out, **fixed)
    assert not list((out / PARTS_DIR).glob("*part-*")) if (out / PARTS_DIR).exists() else True
