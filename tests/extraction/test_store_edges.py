"""The store's edges, each a one-line error (exit 2) or the right output: `~` in every path taken,
no empty --out left by a failed start, errors before reports, a changed --num-tasks, summaries that
count the manifest's rows, and the reader's checks (paths.txt lines = rows, torn failure lines)."""

from __future__ import annotations

import numpy as np
import pytest

from sail_vision.cli import main
from sail_vision.extraction import ExtractionError, extract
from sail_vision.extraction.results import ExtractionResult
from sail_vision.feature_store import (FeatureStoreError, open_feature_dir, read_failures, read_lines,
                                       write_feature_dir)

from image_factory import save_rgb

OPTIONS = dict(layers=[-1], pools=["mean"], batch_size=2, workers=0, progress=False, part_size=2)


@pytest.fixture
def images(tmp_path):
    root = tmp_path / "images"
    for i in range(5):
        save_rgb(root / ("n01000000" if i < 3 else "n02000000") / f"{i:02d}.png", 16, 16, seed=i)
    return root


# ---------------------------------------------------------------------------------- `~`
def test_tilde_is_expanded_in_out_consolidate_and_info(tiny_checkpoint, images, tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    result = extract(tiny_checkpoint, images, "~/feats", **OPTIONS, consolidate=False)
    assert result.out == home / "feats" and open_feature_dir(home / "feats").num_items == 5
    assert not (tmp_path / "~").exists()
    assert main(["consolidate", "~/feats"]) == 0
    assert open_feature_dir(home / "feats").consolidated
    assert main(["extract", "--checkpoint", str(tiny_checkpoint), "--images", str(images), "--out", "~/cli",
                 "--workers", "0", "--no-progress"]) == 0
    assert open_feature_dir(home / "cli").num_items == 5
    (home / "ckpt").symlink_to(tiny_checkpoint, target_is_directory=True)
    capsys.readouterr()
    assert main(["info", "~/ckpt"]) == 0
    assert "checkpoint:" in capsys.readouterr().out


# ---------------------------------------------------------------------------------- failed starts
def test_a_failed_start_leaves_no_empty_out_it_created(tiny_checkpoint, tmp_path, capsys):
    empty = tmp_path / "no-images"
    empty.mkdir()
    out = tmp_path / "new" 
    assert main(["extract", "--checkpoint", str(tiny_checkpoint), "--images", str(empty), "--out", str(out),
                 "--workers", "0", "--no-progress"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not out.exists()
    existing = tmp_path / "mine"  # an empty folder the user made is theirs: kept
    existing.mkdir()
    with pytest.raises(Exception):
        extract(tiny_checkpoint, empty, existing, **OPTIONS)
    assert existing.is_dir()


def test_info_checks_max_layer_before_printing_anything(tiny_checkpoint, capsys):
    assert main(["info", str(tiny_checkpoint), "--max-layer", "9"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1, captured


# ---------------------------------------------------------------------------------- task arrays
def test_a_changed_num_tasks_is_refused(tiny_checkpoint, images, tmp_path):
    out = tmp_path / "tasks"
    extract(tiny_checkpoint, images, out, **OPTIONS, num_tasks=2, task_index=0)
    with pytest.raises(ExtractionError, match=r"--num-tasks 3: .* was started by a task array of 2 tasks; run every "
                                              r"task with --num-tasks 2"):
        extract(tiny_checkpoint, images, out, **OPTIONS, num_tasks=3, task_index=1)
    result = extract(tiny_checkpoint, images, out, **OPTIONS, num_tasks=2, task_index=1)
    assert result.finished and result.num_items == 5


# ---------------------------------------------------------------------------------- summaries
def test_summaries_count_the_rows_the_manifest_holds(tiny_checkpoint, images, tmp_path):
    from sail_vision.extraction.results import label_summary_of

    result = extract(tiny_checkpoint, images, tmp_path / "o", **OPTIONS)
    assert "labels: 5 of 5 rows labelled" in result.labels
    # a shard source knows its labels only once every shard was read: counted from labels.npy
    shard_info = {"from": "the shards' .cls members", "labelled": None, "rows": None, "classes": None, "why": "x"}
    folder = write_feature_dir(tmp_path / "shards", {"x": np.zeros((4, 2), np.float32)}, labels=[0, 1, -1, 1],
                               inputs={"labels": shard_info})
    assert "labels: 3 of 4 rows labelled" in label_summary_of(folder.path, folder.manifest)
    views = ExtractionResult(tmp_path, 12, 12, 0, views=3, images_processed=12, seconds=1.0)
    assert "extracted 12 rows (4 images x 3 views) (12 ok, 0 failed)" in views.summary()
    waiting = ExtractionResult(tmp_path, 12, 0, 0, views=3, images_processed=6, parts_total=2, parts_waiting=1)
    assert "this task processed 6 rows (2 images x 3 views)" in waiting.summary()


# ---------------------------------------------------------------------------------- the reader
def test_a_folder_whose_paths_and_rows_differ_is_refused(tmp_path):
    folder = tmp_path / "f"
    write_feature_dir(folder, {"x": np.zeros((3, 2), np.float32)}, paths=["a", "b", "c"])
    with open(folder / "paths.txt", "a", encoding="utf-8") as handle:
        handle.write("d\n")
    with pytest.raises(FeatureStoreError, match=r"paths.txt has 4 line\(s\) but the features have 3 row\(s\)") as info:
        open_feature_dir(folder)
    assert str(folder) in str(info.value) and "\n" not in str(info.value)
    (folder / "paths.txt").write_text("a\nb\rc\n")  # a carriage return is part of a name, not a line break
    with pytest.raises(FeatureStoreError, match=r"has 2 line\(s\) but the features have 3"):
        open_feature_dir(folder)


def test_one_reader_for_paths_and_failures_tolerates_torn_lines(tmp_path):
    paths = tmp_path / "paths.txt"
    paths.write_text("a\nb\u2028c\nd")  # d: torn (no newline); U+2028 is not a line break here
    assert read_lines(paths) == ["a", "b\u2028c"]
    failures = tmp_path / "failures.jsonl"
    failures.write_text('{"index": 1, "path": "a", "kind": "k", "reason": "r"}\n{"index": 2, "pa')
    assert [r["index"] for r in read_failures(failures)] == [1]
    folder = tmp_path / "f"
    write_feature_dir(folder, {"x": np.zeros((2, 2), np.float32)}, paths=["a", "b"])
    (folder / "failures.jsonl").write_text(failures.read_text())
    assert [r["index"] for r in open_feature_dir(folder).failures] == [1]


def test_the_one_writer_of_row_files_refuses_a_name_with_a_line_break(tmp_path):
    from sail_vision.feature_store import write_lines

    write_lines(tmp_path / "paths.txt", ["a", "b\rc"])
    assert read_lines(tmp_path / "paths.txt") == ["a", "b\rc"]
    with pytest.raises(FeatureStoreError, match=r"paths.txt: row 1 \('x\\ny'\) holds a line break"):
        write_lines(tmp_path / "paths.txt", ["a", "x\ny"])
    assert read_lines(tmp_path / "paths.txt") == ["a", "b\rc"]  # the old file stays


def test_a_carriage_return_in_a_name_keeps_rows_and_names_aligned(tmp_path):
    names = ["a.png", "b\rc.png", "d\u2028e.png", "f.png"]
    folder = write_feature_dir(tmp_path / "f", {"x": np.arange(8, dtype=np.float32).reshape(4, 2)}, paths=names)
    assert open_feature_dir(folder.path).paths == names
