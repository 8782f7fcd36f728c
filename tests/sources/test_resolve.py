"""resolve_inputs: one dataset as a folder, WebDataset shards and Parquet gives the same records;
``--layout auto`` picks the right layout; bad combinations are one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from sail_vision.errors import InputError
from sail_vision.preprocessing import decode_image
from sail_vision.sources import LAYOUTS, ImageSource, Source, resolve_inputs
from sail_vision.sources.parquet import ParquetSource
from sail_vision.sources.webdataset import WebDatasetSource


from image_factory import records_as_parquet, records_as_shards, save_rgb, write_parquet, write_tar


def _pixels(record):
    return np.asarray(decode_image(record.image, name=record.key))


def test_one_dataset_as_folder_shards_and_parquet_gives_identical_records(class_folder, tmp_path):
    folder = resolve_inputs(class_folder)
    records = list(folder.records())
    assert folder.classes == ["cat", "dog", "zebra"] and len(records) == 7
    pattern = records_as_shards(records, tmp_path / "wds", folder.classes)
    shards = resolve_inputs(pattern)
    parquet = resolve_inputs(records_as_parquet(records, tmp_path / "pq" / "train-00000-of-00001.parquet",
                                                folder.classes))
    assert isinstance(shards, WebDatasetSource) and isinstance(parquet, ParquetSource)
    assert [s.name for s in shards.shards] == ["train-000000", "train-000001", "train-000002"]
    for source in (folder, shards, parquet):
        assert isinstance(source, Source)
        assert source.classes == ["cat", "dog", "zebra"]
    for other in (shards, parquet):
        got = list(other.records())
        assert [r.label for r in got] == [r.label for r in records]
        assert all(r.error is None for r in got)
        for mine, theirs in zip(records, got):
            np.testing.assert_array_equal(_pixels(mine), _pixels(theirs))
    # Keys: paths for files; <shard>#<sample key> in tar order; <file>#<row> in row order.
    stems = [r.key.rsplit("/", 1)[1].rsplit(".", 1)[0] for r in records]
    assert [r.key.split("#", 1)[1] for r in shards.records()] == stems
    assert [r.key for r in parquet.records()] == [f"train-00000-of-00001#{i}" for i in range(7)]
    # The description says where the labels came from.
    assert folder.description["labels"]["from"] == "class-folders"
    assert shards.description["labels"]["from"] == "shard-cls"
    assert parquet.description["labels"]["from"] == "parquet-column"


def test_every_shard_streams_its_own_records_in_order(class_folder, tmp_path):
    records = list(resolve_inputs(class_folder).records())
    source = resolve_inputs(records_as_shards(records, tmp_path / "wds", ["cat", "dog", "zebra"]))
    per_shard = [[r.key for r in source.records(shard)] for shard in source.shards]
    assert [len(k) for k in per_shard] == [3, 3, 1]
    assert sum(per_shard, []) == [r.key for r in source.records()]
    assert [source.count(s) for s in source.shards] == [3, 3, 1]


@pytest.mark.parametrize("limit, shards, rows", [(1, 1, 1), (3, 1, 3), (4, 2, 4), (7, 3, 7), (50, 3, 7)])
def test_limit_keeps_the_first_records_of_sharded_sources(class_folder, tmp_path, limit, shards, rows):
    records = list(resolve_inputs(class_folder).records())
    pattern = records_as_shards(records, tmp_path / "wds", ["cat", "dog", "zebra"])
    parquet = tmp_path / "pq" / "data"
    for i in range(3):
        records_as_parquet(records[3 * i: 3 * i + 3], parquet / f"train-{i:05d}-of-00003.parquet",
                           ["cat", "dog", "zebra"])
    for source in (resolve_inputs(pattern, limit=limit), resolve_inputs(parquet, limit=limit)):
        assert len(source.shards) == shards
        assert len(list(source.records())) == rows
        assert source.description["limit"] == limit
    with pytest.raises(InputError, match="--limit must be positive"):
        resolve_inputs(pattern, limit=0)


def test_auto_detects_shard_specs(class_folder, tmp_path):
    records = list(resolve_inputs(class_folder).records())
    pattern = records_as_shards(records, tmp_path / "wds", ["cat", "dog", "zebra"])
    tars = sorted(str(p) for p in (tmp_path / "wds").glob("*.tar"))
    assert resolve_inputs(tars).shards == resolve_inputs(pattern).shards  # several paths
    assert resolve_inputs(tmp_path / "wds").shards == resolve_inputs(pattern).shards  # a folder of shards
    assert resolve_inputs(tars[0]).layout == "webdataset"  # one .tar path
    assert resolve_inputs(f"{tars[0]}::{tars[2]}").shards == resolve_inputs([tars[0], tars[2]]).shards
    assert resolve_inputs(f"pipe:cat {tars[1]}").layout == "webdataset"
    assert resolve_inputs(pattern, layout="webdataset").layout == "webdataset"


def test_a_folder_of_split_shards_needs_split(class_folder, tmp_path):
    records = list(resolve_inputs(class_folder).records())
    data = tmp_path / "hf" / "data"
    records_as_parquet(records[:4], data / "train-00000-of-00002.parquet", ["cat", "dog", "zebra"])
    records_as_parquet(records[4:6], data / "train-00001-of-00002.parquet", ["cat", "dog", "zebra"])
    records_as_parquet(records[6:], data / "validation-00000-of-00001.parquet", ["cat", "dog", "zebra"])
    with pytest.raises(InputError, match="several splits \\(train, validation\\); pass --split train"):
        resolve_inputs(data)
    train = resolve_inputs(data, split="train")
    assert [s.name for s in train.shards] == ["train-00000-of-00002", "train-00001-of-00002"]
    assert len(list(train.records())) == 6 and train.description["split"] == "train"
    assert len(list(resolve_inputs(data, split="validation").records())) == 1
    with pytest.raises(InputError, match="no shards of split 'test'"):
        resolve_inputs(data, split="test")


def test_split_subfolders_of_shards(class_folder, tmp_path):
    records = list(resolve_inputs(class_folder).records())
    root = tmp_path / "default"
    records_as_parquet(records, root / "train" / "0000.parquet", ["cat", "dog", "zebra"])
    records_as_parquet(records[:2], root / "test" / "0000.parquet", ["cat", "dog", "zebra"])
    with pytest.raises(InputError, match="split folders \\(test, train\\), not classes; pass --split test"):
        resolve_inputs(root)
    assert len(list(resolve_inputs(root, split="train").records())) == 7


def test_mixing_shard_kinds_or_layouts_is_refused(class_folder, tmp_path):
    records = list(resolve_inputs(class_folder).records())
    tar = write_tar(tmp_path / "a.tar", [{"__key__": "x", "png": open(records[0].path, "rb").read()}])
    parquet = write_parquet(tmp_path / "b.parquet", [(b"x", None)], None)
    with pytest.raises(InputError, match="mixes WebDataset tar shards and Parquet files"):
        resolve_inputs([str(tar), str(parquet)])
    with pytest.raises(InputError, match="names webdataset shards, not the parquet layout"):
        resolve_inputs(str(tar), layout="parquet")
    with pytest.raises(InputError, match="the webdataset layout needs shards"):
        resolve_inputs(class_folder, layout="webdataset")
    with pytest.raises(InputError, match="notes.txt is not a shard, but other --images are"):
        resolve_inputs([str(tar), str(records[0].path) + ".txt.tar", "notes.txt"])
    with pytest.raises(InputError, match="shard .*missing.tar: no such file"):
        resolve_inputs(str(tmp_path / "missing.tar"))


def test_options_that_do_not_fit_the_layout_are_refused(class_folder, tmp_path):
    assert "pairs" in LAYOUTS and "webdataset" in LAYOUTS and "parquet" in LAYOUTS
    with pytest.raises(InputError, match="layout 'coco'"):
        resolve_inputs(class_folder, layout="coco")
    with pytest.raises(InputError, match="--labels-file works with an ImageNet-style folder"):
        resolve_inputs(class_folder, layout="folder", labels_file=tmp_path / "x.txt")
    with pytest.raises(InputError, match="ADE20K finds its annotations folder itself"):
        resolve_inputs(class_folder, layout="ade20k", masks=tmp_path)
    with pytest.raises(InputError, match="the pairs layout needs --masks"):
        resolve_inputs(class_folder, layout="pairs")
    with pytest.raises(InputError, match="--labels-file or --masks, not both"):
        resolve_inputs(class_folder, labels_file=tmp_path / "x.txt", masks=tmp_path / "m")
    listing = tmp_path / "list.txt"
    listing.write_text("a.png\n")
    tar = write_tar(tmp_path / "a.tar", [{"__key__": "x", "png": b"x"}])
    for images in (listing, tar, [tar, tar], next(class_folder.rglob("*.png")), [listing, listing]):
        with pytest.raises(InputError, match="--split train: picks a split folder .* already names files"):
            resolve_inputs(images, split="train")


def test_flat_sources_still_offer_paths_and_labels(class_folder):
    source = resolve_inputs(class_folder)
    assert isinstance(source, ImageSource) and source.shards is None
    assert source.paths == [r.path for r in source.records()]
    assert source.labels.tolist() == [r.label for r in source.records()]


def test_description_records_the_inputs(class_folder, tmp_path):
    save_rgb(tmp_path / "one.png", 8, 8)
    description = resolve_inputs(class_folder).description
    assert description["layout"] == "imagenet" and description["images"] == str(class_folder)
    assert description["labels"] == {"from": "class-folders", "labelled": 7, "rows": 7, "classes": 3,
                                      "names_from": "class-folders", "why": None}
    single = resolve_inputs(tmp_path / "one.png")
    assert single.layout == "files" and single.description["labels"]["from"] is None


def test_docs_describe_every_layout():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[2] / "docs" / "inputs.md").read_text()
    for layout in LAYOUTS:
        assert f"| `{layout}`" in docs, layout
