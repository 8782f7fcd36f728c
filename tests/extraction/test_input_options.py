"""Input options of `extract`: ``~`` in every input path, --allow-paths-under on the command line,
and --views counting labelled rows as the manifest does (K per image)."""

from __future__ import annotations

import numpy as np
import pytest

from sail_vision.cli import main
from sail_vision.extraction import extract
from sail_vision.extraction.views import expand_views
from sail_vision.feature_store import open_feature_dir
from sail_vision.sources import ImageSource, labels_summary
from sail_vision.sources.labels import label_info

from image_factory import save_rgb, write_parquet

OPTIONS = dict(layers=[-1], pools=["mean"], batch_size=2, workers=0, progress=False, resolution="16x16")


def test_home_is_expanded_in_images_and_labels_file(tiny_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "..")
    for i, name in enumerate(["a", "b"]):
        save_rgb(tmp_path / "flat" / f"{name}.png", 16, 16, seed=i)
    (tmp_path / "labels.txt").write_text("a.png 1\nb.png 0\n")
    result = extract(tiny_checkpoint, "~/flat", tmp_path / "o1", layout="imagenet", labels_file="~/labels.txt",
                     **OPTIONS)
    assert open_feature_dir(result.out).labels.tolist() == [1, 0]
    result = extract(tiny_checkpoint, ["~/flat/a.png", "~/flat/b.png"], tmp_path / "o2", **OPTIONS)
    assert open_feature_dir(result.out).paths == [str(tmp_path / "flat" / n) for n in ("a.png", "b.png")]


def test_allow_paths_under_on_the_command_line(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        main(["extract", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "--allow-paths-under DIR a folder (~ expanded; repeatable)" in help_text
    assert "links leading out) are recorded outside-dataset failures (default: none)" in help_text
    save_rgb(tmp_path / "pics" / "x.png", 16, 16)
    path = write_parquet(tmp_path / "data" / "d.parquet", [(None, "../pics/x.png")], None)
    args = ["extract", "--checkpoint", str(tiny_checkpoint), "--images", str(path), "--workers", "0", "--no-progress",
            "--resolution", "16x16"]
    assert main([*args, "--out", str(tmp_path / "o1")]) == 1
    assert "1 outside-dataset" in capsys.readouterr().err
    monkeypatch.setenv("HOME", str(tmp_path))
    assert main([*args, "--out", str(tmp_path / "o2"), "--allow-paths-under", "/nonexistent",
                 "--allow-paths-under", "~/pics"]) == 2
    assert "--allow-paths-under /nonexistent: no such folder" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "o3"), "--allow-paths-under", "~/pics"]) == 0
    assert open_feature_dir(tmp_path / "o3").paths == [str(tmp_path / "pics" / "x.png")]


def test_view_rows_are_counted_like_the_manifest_counts_them():
    info = label_info("mask-files", labelled=2, rows=3, classes=["a", "b"], names_from="classes.txt")
    source = ImageSource(["/i/a.png", "/i/b.png", "/i/c.png"], np.array([0, 1, 0]), ["a", "b"], "pairs",
                         description={"labels": info}, errors={2: ("mask-missing", "no mask")},
                         masks=["/m/a.png", "/m/b.png", None])
    views = expand_views(source, 4)
    assert len(views.paths) == 12 and sorted(views.errors) == [8, 9, 10, 11]
    assert labels_summary(views.description["labels"]).startswith("labels: 8 of 12 rows labelled from mask-files")
    assert views.description["views"] == {"count": 4, "images": 3}
    assert source.description["labels"]["rows"] == 3  # the listing itself is left as it was
