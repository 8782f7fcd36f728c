"""``~`` is expanded wherever an input path is taken: --images (folders, list files, image files,
shard paths and ``::`` lists), --labels-file, --masks, --allow-paths-under."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sail_vision.sources import resolve_inputs

from image_factory import png_bytes, save_rgb, write_parquet, write_tar


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    for i, name in enumerate(["a", "b"]):
        save_rgb(tmp_path / "cls" / name / f"{name}.png", 8, 8, seed=i)
        save_rgb(tmp_path / "flat" / f"{name}.png", 8, 8, seed=i)
        (tmp_path / "masks").mkdir(exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(tmp_path / "masks" / f"{name}.png")
    (tmp_path / "list.txt").write_text("flat/a.png 0\n~/flat/b.png 1\n")
    (tmp_path / "labels.txt").write_text("a.png 1\nb.png 0\n")
    write_tar(tmp_path / "s0.tar", [{"__key__": "k", "png": png_bytes()}])
    write_tar(tmp_path / "s1.tar", [{"__key__": "k", "png": png_bytes()}])
    return tmp_path


def test_folders_list_files_and_image_files(home):
    assert resolve_inputs("~/cls").classes == ["a", "b"]
    assert resolve_inputs("~/list.txt").paths == [str(home / "flat" / "a.png"), str(home / "flat" / "b.png")]
    assert resolve_inputs(["~/flat/a.png", "~/flat/b.png"]).paths == [str(home / "flat" / n) for n in ("a.png",
                                                                                                       "b.png")]


def test_labels_file_and_masks(home):
    assert list(resolve_inputs("~/flat", layout="imagenet", labels_file="~/labels.txt").labels) == [1, 0]
    source = resolve_inputs("~/flat", masks="~/masks")
    assert source.layout == "pairs" and source.masks == [str(home / "masks" / n) for n in ("a.png", "b.png")]


def test_shard_paths_and_lists(home):
    assert [s.url for s in resolve_inputs("~/s0.tar::~/s1.tar").shards] == [str(home / "s0.tar"),
                                                                           str(home / "s1.tar")]
    assert [s.url for s in resolve_inputs(["~/s0.tar", "~/s1.tar"]).shards] == [str(home / "s0.tar"),
                                                                                str(home / "s1.tar")]
    assert len(resolve_inputs("~/s{0..1}.tar").shards) == 2
    path = write_parquet(home / "p" / "d.parquet", [(None, "../flat/a.png")], None)
    (record,) = resolve_inputs(str(path), allow_paths_under=["~/flat"]).records()
    assert record.path == str(home / "flat" / "a.png")
