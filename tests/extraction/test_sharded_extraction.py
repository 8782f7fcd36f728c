"""`extract` from WebDataset tar shards and Parquet files: each shard is a part; the features equal
those of the same images read as files; bad records are recorded failures."""

from __future__ import annotations

import numpy as np
import pytest

from sail_vision.extraction import extract
from sail_vision.feature_store import open_feature_dir
from sail_vision.sources import resolve_inputs

from feature_dirs import compare_feature_dirs
from image_factory import records_as_shards, save_rgb, write_parquet, write_tar

pytest.importorskip("webdataset")
pytest.importorskip("pyarrow")

OPTIONS = dict(layers=[1, -1], pools=["patch", "mean"], batch_size=2, workers=0, progress=False)
CLASSES = ["n01000000", "n02000000"]


@pytest.fixture
def class_folders(tmp_path):
    root = tmp_path / "images"
    for i in range(12):
        save_rgb(root / CLASSES[i % 2] / f"{i:02d}.png", (16, 40, 24)[i % 3], (16, 24)[i % 2], seed=i)
    return root


@pytest.fixture
def from_files(tiny_checkpoint, class_folders, tmp_path):
    """The folder extracted with parts the size of the shards below (4 images): the same batches."""
    out = tmp_path / "files"
    extract(tiny_checkpoint, class_folders, out, **OPTIONS, part_size=4)
    return open_feature_dir(out)


def _same_features(a, b, classes: bool = True) -> None:
    assert a.names == b.names and a.num_items == b.num_items
    for name in a.names:
        np.testing.assert_array_equal(np.asarray(a.feature(name, valid_only=False)),
                                      np.asarray(b.feature(name, valid_only=False)), err_msg=name)
        info = a.info(name)
        if info.get("offsets"):
            np.testing.assert_array_equal(a.patch_offsets(name, valid_only=False),
                                          b.patch_offsets(name, valid_only=False))
    np.testing.assert_array_equal(a.valid, b.valid)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert a.classes == b.classes or not classes


def test_webdataset_shards_equal_the_same_images_as_files(tiny_checkpoint, class_folders, from_files, tmp_path):
    records = list(resolve_inputs(class_folders).records())
    spec = records_as_shards(records, tmp_path / "shards", CLASSES, shards=3)
    result = extract(tiny_checkpoint, spec, tmp_path / "wds", **OPTIONS)
    assert (result.num_items, result.num_valid, result.num_failed) == (12, 12, 0)
    features = open_feature_dir(result.out)
    _same_features(features, from_files)
    assert features.manifest["parts"]["count"] == 3
    assert [p["num_rows"] for p in features.manifest["parts"]["items"]] == [4, 4, 4]
    assert features.paths[0] == "train-000000#00"  # shard name and sample key
    # a pipe: command reads the same shards (classes.txt is looked for beside local shards only)
    piped = "::".join(f"pipe:cat {tmp_path / 'shards' / f'train-{s:06d}.tar'}" for s in range(3))
    again = extract(tiny_checkpoint, piped, tmp_path / "piped", **OPTIONS)
    _same_features(open_feature_dir(again.out), from_files, classes=False)


def test_parquet_files_equal_the_same_images_as_files(tiny_checkpoint, class_folders, from_files, tmp_path):
    records = list(resolve_inputs(class_folders).records())
    for s in range(3):
        chunk = records[4 * s:4 * s + 4]
        write_parquet(tmp_path / "pq" / f"train-{s:05d}-of-00003.parquet",
                      [(open(r.path, "rb").read(), None) for r in chunk], [r.label for r in chunk], CLASSES)
    result = extract(tiny_checkpoint, tmp_path / "pq", tmp_path / "out", **OPTIONS)
    _same_features(open_feature_dir(result.out), from_files)


def test_task_array_over_shards_equals_one_process(tiny_checkpoint, class_folders, tmp_path):
    spec = records_as_shards(list(resolve_inputs(class_folders).records()), tmp_path / "shards", CLASSES, shards=3)
    one = extract(tiny_checkpoint, spec, tmp_path / "one", **OPTIONS)
    first = extract(tiny_checkpoint, spec, tmp_path / "tasks", **OPTIONS, num_tasks=2, task_index=1)
    assert not first.finished and first.images_processed == 4
    last = extract(tiny_checkpoint, spec, tmp_path / "tasks", **OPTIONS, num_tasks=2, task_index=0)
    assert last.finished
    compare_feature_dirs(last.out, one.out)


def test_bad_records_in_a_shard_are_recorded(tiny_checkpoint, tmp_path):
    save_rgb(tmp_path / "a.png", 16, 16, seed=1)
    good = (tmp_path / "a.png").read_bytes()
    write_tar(tmp_path / "s" / "train-000000.tar", [
        {"__key__": "ok", "png": good, "cls": 0},
        {"__key__": "noimage", "txt": b"hello", "cls": 1},
        {"__key__": "broken", "png": good[: len(good) // 2], "cls": 1},
        {"__key__": "badlabel", "png": good, "cls": 7},
    ])
    (tmp_path / "s" / "classes.txt").write_text("a\nb\n")
    result = extract(tiny_checkpoint, tmp_path / "s" / "train-000000.tar", tmp_path / "out", **OPTIONS)
    assert (result.num_items, result.num_valid, result.num_failed) == (4, 1, 3)
    kinds = {r["path"].split("#")[1]: r["kind"] for r in result.failures}
    assert kinds["noimage"] == "no-image" and kinds["badlabel"] == "bad-label"
    assert kinds["broken"] in ("truncated", "corrupt", "unreadable")
    features = open_feature_dir(result.out)
    assert features.labels.tolist()[0] == 0 and features.valid.tolist() == [True, False, False, False]


def _tar_with_names(path, names, data):
    import io
    import tarfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("char", ["\n", "\r", "\x85", "\u2028", "\x0b"], ids=repr)
def test_a_shard_key_with_a_line_break_is_one_failed_row_and_the_rows_stay_aligned(tiny_checkpoint, tmp_path, char):
    save_rgb(tmp_path / "a.png", 16, 16, seed=1)
    names = ["k0.png", f"k1{char}x.png", f"k2{char}{char}.png", "k3.png", "k4.png", "k5.png", "k6.png"]
    shard = _tar_with_names(tmp_path / "s" / "s.tar", names, (tmp_path / "a.png").read_bytes())
    result = extract(tiny_checkpoint, shard, tmp_path / "out", **OPTIONS)
    assert (result.num_items, result.num_valid, result.num_failed) == (7, 5, 2)
    lines = (result.out / "paths.txt").read_bytes().decode("utf-8")
    assert len(lines.splitlines()) == 7 and lines.count("\n") == 7
    features = open_feature_dir(result.out)
    paths = features.paths_of(valid_only=False)
    assert len(paths) == 7 and features.valid.tolist() == [True, False, False, True, True, True, True]
    assert paths[3:] == ["s#k3", "s#k4", "s#k5", "s#k6"] and features.paths == ["s#k0", *paths[3:]]
    assert {r["kind"] for r in result.failures} == {"bad-name"}
    assert [r["path"] for r in result.failures] == paths[1:3] == ["s#k1" + repr(char)[1:-1] + "x",
                                                                   "s#k2" + 2 * repr(char)[1:-1]]


def test_parquet_rows_record_what_they_read_and_refuse_paths_outside(tiny_checkpoint, tmp_path):
    save_rgb(tmp_path / "data" / "pics" / "in.png", 16, 16, seed=1)
    save_rgb(tmp_path / "secret.png", 16, 16, seed=2)
    path = write_parquet(tmp_path / "data" / "d.parquet",
                         [(None, "pics/in.png"), (None, "../secret.png"), (None, "/proc/self/environ"),
                          ((tmp_path / "secret.png").read_bytes(), None)], [0, 1, 0, 1], ["a", "b"])
    result = extract(tiny_checkpoint, path, tmp_path / "out", **OPTIONS)
    features = open_feature_dir(result.out)
    assert features.paths_of(valid_only=False) == [str(tmp_path / "data" / "pics" / "in.png"), "d#1", "d#2", "d#3"]
    assert [(r["path"], r["kind"]) for r in result.failures] == [("d#1", "outside-dataset"),
                                                                 ("d#2", "outside-dataset")]
    assert result.labels.startswith("labels: 4 of 4 rows labelled from parquet-column, 2 classes")
    allowed = extract(tiny_checkpoint, path, tmp_path / "allowed", **OPTIONS, allow_paths_under=[str(tmp_path)])
    assert open_feature_dir(allowed.out).paths_of(valid_only=False)[1] == str(tmp_path / "secret.png")
    assert [(r["path"], r["kind"]) for r in allowed.failures] == [("d#2", "outside-dataset")]


def test_shard_runs_report_their_labelled_rows(tiny_checkpoint, tmp_path):
    save_rgb(tmp_path / "a.png", 16, 16, seed=1)
    good = (tmp_path / "a.png").read_bytes()
    write_tar(tmp_path / "s" / "train-000000.tar", [{"__key__": f"k{i}", "png": good, "cls": i % 2} for i in range(3)]
              + [{"__key__": "k3", "png": good, "cls": 5}])
    (tmp_path / "s" / "classes.txt").write_text("a\nb\n")
    result = extract(tiny_checkpoint, tmp_path / "s", tmp_path / "out", **OPTIONS)
    assert result.labels.startswith("labels: 3 of 4 rows labelled from shard-cls, 2 classes named from ")
