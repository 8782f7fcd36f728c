"""One writer per --out, --overwrite deletes only its own files, exact weights identity on --resume,
and a SIGKILL at any step (first manifest, --overwrite, finalisation) recoverable byte for byte."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from sail_vision.errors import SailVisionError
from sail_vision.extraction import extract
from sail_vision.feature_store import STATE_DIR, FeatureStoreError, open_feature_dir
from sail_vision.folder_lock import LOCK_FILE, FolderInUseError, hold_folder
from sail_vision.pause_points import POINTS

from feature_dirs import compare_feature_dirs, extract_command, kill, start_paused
from image_factory import save_rgb

OPTIONS = dict(layers=[1, -1], pools=["patch", "mean"], batch_size=2, workers=0, progress=False)
CLI_OPTIONS = ["--layers", "1", "-1", "--pool", "patch", "mean", "--batch-size", "2", "--workers", "0",
               "--commit-interval", "0.05", "--no-progress"]


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    for i in range(6):
        save_rgb(root / f"img{i}.png", *((40, 32) if i % 2 else (24, 24)), seed=i)
    return root


@pytest.fixture
def reference(tiny_checkpoint, images, tmp_path) -> Path:
    out = tmp_path / "reference"
    extract(tiny_checkpoint, images, out, **OPTIONS)
    return out


def _cli(checkpoint, images, out, *extra):
    return extract_command("--checkpoint", checkpoint, "--images", images, "--out", out, *CLI_OPTIONS, *extra)


def _run(command) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def _no_leftovers(out: Path) -> None:
    names = [p.name for p in out.iterdir()]
    assert STATE_DIR not in names and LOCK_FILE not in names
    assert not [n for n in names if n.endswith(".tmp")], names


def test_every_pause_point_used_here_is_documented():
    for point in ("extract:planning", "extract:encoding", "extract:overwrite", "extract:finalize",
                  "extract:cleanup", "atomic-write:manifest.json"):
        assert point in POINTS


# ---------------------------------------------------------------------------------- one writer
def test_a_second_writer_is_refused_up_front_naming_the_first(tiny_checkpoint, images, reference, tmp_path):
    out = tmp_path / "out"
    first = start_paused(_cli(tiny_checkpoint, images, out), "extract:planning", tmp_path / "marker")
    try:
        for flags in ([], ["--resume"], ["--overwrite"]):
            second = _run(_cli(tiny_checkpoint, images, out, *flags))
            assert second.returncode == 2
            assert f"another sail-vision run is writing there (pid {first.pid} on " in second.stderr
            assert "running 'sail-vision extract' since" in second.stderr
            assert "Traceback" not in second.stderr
    finally:
        kill(first)
    # The killed holder's lock is stale: the next run takes it over and finishes as if alone.
    again = _run(_cli(tiny_checkpoint, images, out))
    assert again.returncode == 0, again.stderr
    compare_feature_dirs(out, reference)
    _no_leftovers(out)


def test_a_writer_paused_mid_run_blocks_overwrite_and_resume_then_resume_finishes(tiny_checkpoint, images,
                                                                                 reference, tmp_path):
    """The interleaving that once left a 'complete' folder with zero rows cannot start at all."""
    out = tmp_path / "out"
    first = start_paused(_cli(tiny_checkpoint, images, out), "extract:encoding", tmp_path / "marker")
    try:
        for flags in (["--overwrite"], ["--resume"]):
            assert _run(_cli(tiny_checkpoint, images, out, *flags)).returncode == 2
        with pytest.raises(FolderInUseError, match="another sail-vision run is writing there"):
            extract(tiny_checkpoint, images, out, resume=True, **OPTIONS)
    finally:
        kill(first)
    with pytest.raises(FeatureStoreError, match="unfinished"):
        open_feature_dir(out)
    extract(tiny_checkpoint, images, out, resume=True, **OPTIONS)
    compare_feature_dirs(out, reference)


def test_the_lock_is_not_inherited_by_forked_children(tmp_path):
    """DataLoader workers are forked: a killed parent's orphaned workers must not keep its lock."""
    with hold_folder(tmp_path, "holder"):
        pid = os.fork()
        if pid == 0:  # the child: the lock is not its to hold or release
            try:
                with hold_folder(tmp_path, "child"):
                    pass
                os._exit(3)  # got the lock: the parent's lock was not respected
            except FolderInUseError:
                os._exit(0)
            except BaseException:
                os._exit(4)
        assert os.waitpid(pid, 0)[1] >> 8 == 0
        assert (tmp_path / LOCK_FILE).is_file()  # the child's exit removed nothing
    child_holds = os.fork()
    if child_holds == 0:
        with hold_folder(tmp_path, "child"):
            os._exit(0)  # dies holding the lock: the kernel releases it
    os.waitpid(child_holds, 0)
    with hold_folder(tmp_path, "taker"):  # a stale lock is taken over
        assert "taker" in (tmp_path / LOCK_FILE).read_text()


# ---------------------------------------------------------------------------------- --overwrite
def test_overwrite_never_deletes_what_it_did_not_write(tiny_checkpoint, images, reference, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    (out / "thesis.tex").write_text("years of work")
    (out / "my_notes").mkdir()
    (out / "my_notes" / "a.txt").write_text("notes")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(FeatureStoreError, match=r"holds files sail-vision did not write \(my_notes/, thesis.tex\)"):
        extract(tiny_checkpoint, images, out, overwrite=True, **OPTIONS)
    assert sorted(p.name for p in out.iterdir()) == before
    assert (out / "thesis.tex").read_text() == "years of work"
    (out / "thesis.tex").unlink()
    shutil.rmtree(out / "my_notes")
    extract(tiny_checkpoint, images, out, overwrite=True, **OPTIONS)
    compare_feature_dirs(out, reference)


def test_a_folder_of_other_files_is_refused_without_touching_it(tiny_checkpoint, images, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("x")
    for flags in (dict(), dict(resume=True), dict(overwrite=True)):
        with pytest.raises(SailVisionError, match="thesis.tex"):
            extract(tiny_checkpoint, images, out, **flags, **OPTIONS)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


# ---------------------------------------------------------------------------------- kills
@pytest.mark.parametrize("point", ["atomic-write:manifest.json", "extract:planning"])
def test_killed_while_starting_then_resume_or_overwrite_is_byte_identical(tiny_checkpoint, images, reference,
                                                                         tmp_path, point):
    out = tmp_path / "out"
    kill(start_paused(_cli(tiny_checkpoint, images, out), point, tmp_path / "marker"))
    if point.startswith("atomic-write"):
        assert any(p.name.startswith(".manifest.json.") for p in out.iterdir())  # killed mid-write
        plain = _run(_cli(tiny_checkpoint, images, out))
        assert plain.returncode == 2 and "pass --resume or --overwrite" in plain.stderr, plain.stderr
    resumed = _run(_cli(tiny_checkpoint, images, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    compare_feature_dirs(out, reference)
    _no_leftovers(out)


@pytest.mark.parametrize("recover", ["--resume", "--overwrite"])
def test_killed_during_overwrite_then_recovered_is_byte_identical(tiny_checkpoint, images, reference, tmp_path,
                                                                  recover):
    out = tmp_path / "out"
    extract(tiny_checkpoint, images, out, layers=[1], pools=["mean"], workers=0, progress=False)  # another run
    kill(start_paused(_cli(tiny_checkpoint, images, out, "--overwrite"), "extract:overwrite", tmp_path / "m"))
    assert not (out / "manifest.json").exists()  # the manifest goes first
    recovered = _run(_cli(tiny_checkpoint, images, out, recover))
    assert recovered.returncode == 0, recovered.stderr
    compare_feature_dirs(out, reference)
    _no_leftovers(out)


@pytest.mark.parametrize("point", ["extract:finalize", "extract:cleanup", "atomic-write:valid.npy"])
def test_killed_during_finalisation_then_resume_is_byte_identical(tiny_checkpoint, images, reference, tmp_path,
                                                                  point):
    out = tmp_path / "out"
    kill(start_paused(_cli(tiny_checkpoint, images, out), point, tmp_path / "marker"))
    resumed = _run(_cli(tiny_checkpoint, images, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    compare_feature_dirs(out, reference)
    _no_leftovers(out)


# ---------------------------------------------------------------------------------- identity
def _flip_middle_byte(file: Path, keep_mtime: bool) -> None:
    stat = file.stat()
    with open(file, "r+b") as handle:
        handle.seek(stat.st_size // 2)
        byte = handle.read(1)
        handle.seek(stat.st_size // 2)
        handle.write(bytes([byte[0] ^ 0x01]))
    if keep_mtime:
        os.utime(file, ns=(stat.st_atime_ns, stat.st_mtime_ns))


@pytest.mark.parametrize("keep_mtime", [False, True])
def test_resume_refuses_weights_changed_in_the_middle_of_a_shard(tiny_checkpoint, images, tmp_path, keep_mtime):
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    out = tmp_path / "out"
    extract(checkpoint, images, out, **OPTIONS)
    (weights,) = sorted(checkpoint.glob("*.safetensors"))
    assert weights.stat().st_size > 3 << 20  # larger than the old digest's first + last MiB
    _flip_middle_byte(weights, keep_mtime)
    with pytest.raises(SailVisionError, match=r"cannot resume with different settings \(weights_digest: was"):
        extract(checkpoint, images, out, resume=True, **OPTIONS)


def test_the_weights_digest_is_cached_and_covers_every_byte(tiny_checkpoint, tmp_path, monkeypatch):
    from sail_vision import checkpoint_digest
    from sail_vision.checkpoint import SailCheckpoint

    monkeypatch.setenv(checkpoint_digest.CACHE_ENV, str(tmp_path / "cache"))
    checkpoint = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, checkpoint)
    reads = []
    original = checkpoint_digest._hash_file
    monkeypatch.setattr(checkpoint_digest, "_hash_file", lambda path, bar: reads.append(path) or original(path, bar))
    first = checkpoint_digest.weights_digest(SailCheckpoint(checkpoint))
    assert checkpoint_digest.weights_digest(SailCheckpoint(checkpoint)) == first
    assert len(reads) == 1  # paid once
    (weights,) = sorted(checkpoint.glob("*.safetensors"))
    data_start = 8 + int.from_bytes(weights.read_bytes()[:8], "little")  # after the safetensors header
    for position in (data_start, weights.stat().st_size // 3, weights.stat().st_size - 1):
        with open(weights, "r+b") as handle:
            handle.seek(position)
            byte = handle.read(1)
            handle.seek(position)
            handle.write(bytes([byte[0] ^ 0x80]))
        changed = checkpoint_digest.weights_digest(SailCheckpoint(checkpoint))
        assert changed != first
        with open(weights, "r+b") as handle:  # put it back: the same bytes give the same digest
            handle.seek(position)
            handle.write(byte)
        assert checkpoint_digest.weights_digest(SailCheckpoint(checkpoint)) == first


# ---------------------------------------------------------------------------------- disk space
def test_too_little_free_space_is_refused_before_anything_is_allocated(tiny_checkpoint, images, tmp_path,
                                                                       monkeypatch):

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda path: real(path)._replace(free=1000))
    out = tmp_path / "out"
    with pytest.raises(FeatureStoreError, match=r"need .* more but only 1.0 KB is free"):
        extract(tiny_checkpoint, images, out, **OPTIONS)
    assert not list(out.glob("layer-*"))
    monkeypatch.setattr(shutil, "disk_usage", real)
    extract(tiny_checkpoint, images, out, resume=True, **OPTIONS)
    assert open_feature_dir(out).num_valid == 6


def test_disk_full_mid_run_is_a_one_line_error_and_resume_finishes(tiny_checkpoint, images, reference, tmp_path,
                                                                   monkeypatch):
    from sail_vision.extraction import writer

    calls = {"n": 0}
    real = os.pwrite

    def filling_up(fd, data, offset):
        calls["n"] += 1
        if calls["n"] > 6:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(writer.os, "pwrite", filling_up)
    out = tmp_path / "out"
    with pytest.raises(writer.WriteError, match=r"the disk is full; rows finished so far are kept: free some "
                                                r"space, then rerun the same command with --resume"):
        extract(tiny_checkpoint, images, out, **OPTIONS)
    monkeypatch.setattr(writer.os, "pwrite", real)
    extract(tiny_checkpoint, images, out, resume=True, **OPTIONS)
    compare_feature_dirs(out, reference)


def test_disk_full_through_the_cli_is_one_line(tiny_checkpoint, images, tmp_path):
    out = tmp_path / "out"
    full = _run(_cli(tiny_checkpoint, images, "/proc/sail-vision-out"))
    assert full.returncode == 2 and "cannot create the folder" in full.stderr and "Traceback" not in full.stderr
    unwritable = _run(_cli(tiny_checkpoint, images, "/proc/self"))
    assert unwritable.returncode == 2 and "Traceback" not in unwritable.stderr, unwritable.stderr
    assert not out.exists()


def test_labels_are_summarised_at_the_end_of_a_run(tiny_checkpoint, images, tmp_path):
    result = extract(tiny_checkpoint, images, tmp_path / "out", **OPTIONS)
    assert "labels: none (" in result.summary()
    classes = tmp_path / "classes"
    for c, name in enumerate(["cat", "dog"]):
        for i in range(2):
            save_rgb(classes / name / f"{i}.png", 16, 16, seed=10 * c + i)
    labelled = extract(tiny_checkpoint, classes, tmp_path / "labelled", layout="imagenet", **OPTIONS)
    assert "labels: 4 of 4 rows labelled from class-folders, 2 classes" in labelled.summary()
    assert np.load(tmp_path / "labelled" / "labels.npy").tolist() == [0, 0, 1, 1]
