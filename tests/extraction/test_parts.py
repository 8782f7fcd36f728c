"""Parts: any split of the work (one process, task arrays in any order, concurrent tasks, kills and
reruns) writes the bytes of one uninterrupted run; unfinished datasets say what is missing."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from sail_vision.errors import InputError
from sail_vision.extraction import extract
from sail_vision.extraction.parts import Part, TaskSlice, plan_parts, task_slice
from sail_vision.extraction import ExtractionError
from sail_vision.feature_store import PARTS_DIR, FeatureStoreError, open_feature_dir, read_manifest

from feature_dirs import compare_feature_dirs, extract_command, kill, start_paused
from image_factory import save_rgb, write_bad_inputs

OPTIONS = dict(layers=[1, -1], pools=["patch", "mean"], batch_size=2, workers=0, progress=False, part_size=3)


@pytest.fixture
def images(tmp_path):
    """Ten images of three sizes in two classes, one of them (row 7) corrupt."""
    root = tmp_path / "images"
    for i in range(10):
        save_rgb(root / ("n01000000" if i < 5 else "n02000000") / f"{i:02d}.png", (16, 40, 24)[i % 3],
                 (16, 24)[i % 2], seed=i)
    (root / "n02000000" / "07.png").write_bytes(write_bad_inputs(tmp_path / "bad")["corrupt"].read_bytes())
    return root


@pytest.fixture
def reference(tiny_checkpoint, images, tmp_path):
    out = tmp_path / "reference"
    extract(tiny_checkpoint, images, out, **OPTIONS)
    return out


# ---------------------------------------------------------------------------------- planning
def test_plan_parts_cover_every_row_once():
    parts = plan_parts(10, 3)
    assert [(p.first_row, p.num_rows) for p in parts] == [(0, 3), (3, 3), (6, 3), (9, 1)]
    assert [p.name for p in parts] == ["part-00000", "part-00001", "part-00002", "part-00003"]
    assert [(p.first_row, p.num_rows) for p in plan_parts(6, 3)] == [(0, 3), (3, 3)]
    with pytest.raises(InputError, match="--part-size must be positive"):
        plan_parts(10, 0)


def test_tasks_and_ranks_share_the_parts_without_overlap():
    parts = plan_parts(20, 1)
    seen = []
    for task in range(3):
        for rank in range(2):
            seen += TaskSlice(3, task, rank, 2).parts_for(parts)
    assert sorted(p.index for p in seen) == list(range(20))
    assert [p.index for p in TaskSlice(3, 1, 1, 2).parts_for(parts)] == [4, 10, 16]


def test_task_slice_from_options_and_slurm():
    assert task_slice(None, None, environ={}) == TaskSlice(1, 0)
    assert task_slice(4, 2, environ={"SLURM_ARRAY_TASK_COUNT": "9"}) == TaskSlice(4, 2)
    slurm = {"SLURM_ARRAY_TASK_COUNT": "8", "SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "1"}
    assert task_slice(None, None, environ=slurm) == TaskSlice(8, 4)  # --array=1-8
    assert task_slice(None, None, rank=1, world_size=2, environ={"SLURM_ARRAY_TASK_COUNT": "2",
                                                                  "SLURM_ARRAY_TASK_ID": "0"}) == TaskSlice(2, 0, 1, 2)
    with pytest.raises(InputError, match="both --num-tasks and --task-index"):
        task_slice(3, None, environ={})
    with pytest.raises(InputError, match=r"--task-index 3: must be between 0 and --num-tasks - 1 = 2"):
        task_slice(3, 3, environ={})
    with pytest.raises(InputError, match="SLURM_ARRAY_TASK_ID='x' is not an integer"):
        task_slice(None, None, environ={"SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_ID": "x"})


# ---------------------------------------------------------------------------------- splits of the work
def test_task_array_in_any_order_equals_one_process(tiny_checkpoint, images, reference, tmp_path):
    out = tmp_path / "tasks"
    first = extract(tiny_checkpoint, images, out, **OPTIONS, num_tasks=3, task_index=2)
    assert not first.finished and (first.parts_total, first.parts_waiting) == (4, 3)
    assert "1 of 4 parts are finished, 3 still to do" in first.summary()
    with pytest.raises(FeatureStoreError, match="unfinished"):
        open_feature_dir(out)
    assert sorted(p.name for p in (out / PARTS_DIR).iterdir()) == ["part-00002"]
    again = extract(tiny_checkpoint, images, out, **OPTIONS, num_tasks=3, task_index=2)
    assert again.images_processed == 0  # its part is committed: nothing redone
    extract(tiny_checkpoint, images, out, **OPTIONS, num_tasks=3, task_index=0)
    last = extract(tiny_checkpoint, images, out, **OPTIONS, num_tasks=3, task_index=1)
    assert last.finished and (last.num_items, last.num_valid, last.num_failed) == (10, 9, 1)
    assert not (out / PARTS_DIR).exists()  # the last task joined the parts
    compare_feature_dirs(out, reference)
    features = open_feature_dir(out)
    assert features.failures[0]["index"] == 7 and features.failures[0]["path"].endswith("07.png")


def test_finalize_names_missing_parts_then_joins(tiny_checkpoint, images, reference, tmp_path):
    out = tmp_path / "tasks"
    with pytest.raises(ExtractionError, match="nothing to finalize"):
        extract(tiny_checkpoint, images, out, **OPTIONS, finalize=True)
    for task in (0, 1):
        extract(tiny_checkpoint, images, out, **OPTIONS, num_tasks=4, task_index=task)
    with pytest.raises(ExtractionError, match=r"2 part\(s\) not finished \(part-00002, part-00003\)"):
        extract(tiny_checkpoint, images, out, **OPTIONS, finalize=True)
    for task in (2, 3):  # the last of these finds every part committed and joins them
        extract(tiny_checkpoint, images, out, **{**OPTIONS, "part_size": 3}, num_tasks=4, task_index=task)
    assert read_manifest(out)["complete"]
    done = extract(tiny_checkpoint, images, out, **OPTIONS, finalize=True)
    assert done.already_complete
    compare_feature_dirs(out, reference)


def test_tasks_refuse_other_settings(tiny_checkpoint, images, tmp_path):
    out = tmp_path / "tasks"
    extract(tiny_checkpoint, images, out, **OPTIONS, num_tasks=2, task_index=0)
    with pytest.raises(ExtractionError, match="part_size: was 3, now 4"):
        extract(tiny_checkpoint, images, out, **{**OPTIONS, "part_size": 4}, num_tasks=2, task_index=1)
    with pytest.raises(ExtractionError, match="cannot resume with different settings"):
        extract(tiny_checkpoint, images, out, **{**OPTIONS, "layers": [1]}, num_tasks=2, task_index=1)


def test_concurrent_tasks_equal_one_process(tiny_checkpoint, images, reference, tmp_path):
    out = tmp_path / "concurrent"
    commands = [extract_command("--checkpoint", tiny_checkpoint, "--images", images, "--out", out, "--layers", "1",
                                "-1", "--pool", "patch", "mean", "--batch-size", 2, "--workers", 0, "--part-size", 3,
                                "--no-progress", "--allow-failures", "--num-tasks", 2, "--task-index", task)
                for task in (0, 1)]
    processes = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    results = [p.communicate(timeout=180) + (p.returncode,) for p in processes]
    assert all(code == 0 for *_, code in results), results
    assert any("extracted 10 images (9 ok, 1 failed)" in stdout for stdout, *_ in results), results
    compare_feature_dirs(out, reference)


@pytest.mark.parametrize("point", ["extract:commit-part", "extract:consolidate"])
def test_killed_while_committing_or_joining_then_resumed(tiny_checkpoint, images, reference, tmp_path, point):
    out = tmp_path / "killed"
    command = extract_command("--checkpoint", tiny_checkpoint, "--images", images, "--out", out, "--layers", "1",
                              "-1", "--pool", "patch", "mean", "--batch-size", 2, "--workers", 0, "--part-size", 3,
                              "--no-progress", "--allow-failures")
    kill(start_paused(command, point, tmp_path / "marker"))
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    # killed while joining, the dataset was already finished (and readable from its parts): the rerun joins
    expected = "already complete (10 images, 1 failed)" if point == "extract:consolidate" else "extracted 10 images"
    assert expected in resumed.stdout, resumed.stdout
    compare_feature_dirs(out, reference)


def test_parts_of_native_resolution_patch_rows_join_with_shifted_offsets(tiny_checkpoint, images, tmp_path):
    """Offsets of each part continue where the previous part's rows end; rows equal a one-part run's."""
    joined = open_feature_dir(extract(tiny_checkpoint, images, tmp_path / "three", **OPTIONS).out)
    whole = open_feature_dir(extract(tiny_checkpoint, images, tmp_path / "one", **{**OPTIONS, "part_size": 100},
                                     batching="grouped").out)
    assert whole.manifest["parts"]["count"] == 1 and joined.manifest["parts"]["count"] == 4
    name = joined.name_for(1, "patch")
    np.testing.assert_array_equal(joined.patch_offsets(name, valid_only=False), whole.patch_offsets(name, valid_only=False))
    for index in range(joined.num_valid):
        np.testing.assert_allclose(joined.patch_maps(name, index).astype(np.float32),
                                   whole.patch_maps(name, index).astype(np.float32), atol=2e-3)
    np.testing.assert_array_equal(joined.labels_of(), whole.labels_of())


def test_part_names_are_stable():
    assert Part(12, 36, 3).name == "part-00012"


# ---------------------------------------------------------------------------------- unjoined parts
def test_parted_array_indexes_like_the_joined_array(tmp_path):
    from sail_vision.feature_store import PartedArray

    rng = np.random.default_rng(0)
    pieces = [rng.normal(size=(n, 3, 2)).astype(np.float16) for n in (4, 1, 0, 5)]
    files = []
    for i, piece in enumerate(pieces):
        files.append(tmp_path / f"{i}.npy")
        np.save(files[-1], piece)
    whole, parted = np.concatenate(pieces), PartedArray(files)
    assert parted.shape == whole.shape and parted.dtype == whole.dtype and len(parted) == 10
    mask = rng.random(10) > 0.5
    for key in (0, 4, -1, slice(None), slice(2, 8), slice(None, None, 3), slice(9, 1, -2), [7, 0, 4, 4],
                np.array([], dtype=int), mask, (slice(1, 6), 2), (3, 1, 0), ([5, 1], slice(None), 1)):
        np.testing.assert_array_equal(parted[key], whole[key], err_msg=str(key))
    np.testing.assert_array_equal(np.asarray(parted), whole)
    with pytest.raises(IndexError):
        parted[[10]]


def test_unjoined_parts_read_as_one_dataset_then_consolidate(tiny_checkpoint, images, reference, tmp_path):
    from sail_vision.cli import main
    from sail_vision.probes.data import load_feature_dir

    out = tmp_path / "parted"
    extract(tiny_checkpoint, images, out, **OPTIONS, consolidate=False)
    parted, joined = open_feature_dir(out), open_feature_dir(reference)
    assert not parted.consolidated and joined.consolidated
    assert sorted(p.name for p in (out / PARTS_DIR).iterdir()) == [f"part-0000{i}" for i in range(4)]
    for name in joined.names:
        for valid_only in (True, False):
            np.testing.assert_array_equal(np.asarray(parted.feature(name, valid_only=valid_only)),
                                          np.asarray(joined.feature(name, valid_only=valid_only)))
    patch = joined.name_for(1, "patch")
    for index in range(joined.num_valid):
        np.testing.assert_array_equal(parted.patch_maps(patch, index), joined.patch_maps(patch, index))
    assert parted.paths == joined.paths and parted.failures == joined.failures
    np.testing.assert_array_equal(parted.labels, joined.labels)
    data = load_feature_dir(out)  # the probes' reader
    mean = joined.name_for(-1, "mean")
    np.testing.assert_array_equal(data.read([mean])[mean], load_feature_dir(reference).read([mean])[mean])
    out_rows = np.empty((3, joined.info(mean)["shape"][1]), np.float16)
    np.testing.assert_array_equal(data.read_into(mean, np.array([4, 0, 2]), out_rows),
                                  np.asarray(joined.feature(mean))[[4, 0, 2]])

    assert main(["consolidate", str(out)]) == 0
    assert not (out / PARTS_DIR).exists() and open_feature_dir(out).consolidated
    compare_feature_dirs(out, reference)
    assert main(["consolidate", str(out)]) == 0  # already consolidated: nothing to do


def test_consolidate_refuses_an_unfinished_folder(tiny_checkpoint, images, tmp_path, capsys):
    from sail_vision.cli import main

    out = tmp_path / "tasks"
    extract(tiny_checkpoint, images, out, **OPTIONS, num_tasks=2, task_index=0)
    assert main(["consolidate", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unfinished" in err[0], err


def test_a_part_from_another_extraction_is_refused_by_name(tiny_checkpoint, images, tmp_path):
    other = tmp_path / "other"
    extract(tiny_checkpoint, images, other, **{**OPTIONS, "layers": [1]}, num_tasks=4, task_index=1)
    out = tmp_path / "tasks"
    for task in (0, 2, 3):
        extract(tiny_checkpoint, images, out, **OPTIONS, num_tasks=4, task_index=task)
    (other / PARTS_DIR / "part-00001").rename(out / PARTS_DIR / "part-00001")  # someone else's part
    with pytest.raises(FeatureStoreError, match=r"part-00001: this part comes from another extraction "
                                                r"\(settings differ: layers\)"):
        extract(tiny_checkpoint, images, out, **OPTIONS, finalize=True)
    assert sorted(p.name for p in (out / PARTS_DIR).iterdir()) == [f"part-0000{i}" for i in range(4)]  # kept


def test_probes_on_unjoined_parts_equal_probes_on_the_joined_folder(tiny_checkpoint, images, reference, tmp_path):
    import json

    from sail_vision.cli import main

    parted = tmp_path / "parted"
    extract(tiny_checkpoint, images, parted, **OPTIONS, consolidate=False)
    summaries = []
    for name, folder in (("parted", parted), ("joined", reference)):
        out = tmp_path / f"probe-{name}"
        assert main(["probe", "--train", str(folder), "--val", str(folder), "--features", "layer-4_mean",
                     "--lrs", "0.01,0.1", "--weight-decays", "0", "--epochs", "3", "--out", str(out),
                     "--quiet"]) == 0
        summary = json.loads((out / "summary.json").read_text())
        summaries.append({k: summary[k] for k in ("top1", "chosen") if k in summary})
    assert summaries[0] == summaries[1] and "top1" in summaries[0]


def test_the_listings_own_problems_are_recorded_with_their_kind(tiny_checkpoint, tmp_path, monkeypatch):
    """A sub-folder that cannot be listed is a failed row saying so, in whichever part it falls."""
    import os

    for rel in ["a/1.png", "b/2.png", "c/3.png", "c/4.png"]:
        save_rgb(tmp_path / "images" / rel, 16, 16, seed=len(rel))
    real_scandir = os.scandir
    denied = str(tmp_path / "images" / "b")

    def scandir(path="."):
        if isinstance(path, (str, os.PathLike)) and os.fspath(path) == denied:
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    result = extract(tiny_checkpoint, tmp_path / "images", tmp_path / "out", **{**OPTIONS, "part_size": 2},
                     layout="folder")
    assert (result.num_items, result.num_failed) == (4, 1)
    (record,) = result.failures
    assert (record["index"], record["kind"]) == (1, "unreadable") and "cannot list folder" in record["reason"]
