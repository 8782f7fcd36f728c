"""`sail-vision demo`: cached random checkpoint, sample images, features and a PCA picture."""

from __future__ import annotations

from PIL import Image

from sail_vision.cli import main
from sail_vision.demo import cache_dir
from sail_vision.feature_store import open_feature_dir


def test_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("SAIL_VISION_CACHE", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "own"
    monkeypatch.delenv("SAIL_VISION_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "sail-vision"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "sail-vision"


def test_demo_runs_and_reuses_its_cached_checkpoint(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SAIL_VISION_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "made and cached" in printed and str(out / "pca.png") in printed
    features = open_feature_dir(out / "features")
    assert features.num_items == features.num_valid >= 5
    assert len({Image.open(p).size for p in features.paths}) >= 4  # several image sizes
    assert features.info("layer-4_patch")["layout"] == "rows"
    assert Image.open(out / "pca.png").size[1] > 1000
    checkpoint = tmp_path / "cache" / "checkpoints" / "tiny-seed0"
    stamp = (checkpoint / "config.json").stat().st_mtime_ns
    assert main(["demo", "--out", str(out), "--no-progress"]) == 0
    assert "(tiny random SAIL checkpoint, cached)" in capsys.readouterr().out
    assert (checkpoint / "config.json").stat().st_mtime_ns == stamp


def test_demo_repairs_a_broken_cache_and_spares_foreign_folders(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SAIL_VISION_CACHE", str(tmp_path / "cache"))
    broken = tmp_path / "cache" / "checkpoints" / "tiny-seed0"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    assert main(["demo", "--out", str(foreign), "--no-progress"]) == 2
    assert "was not made by `sail-vision demo`" in capsys.readouterr().err
    assert (foreign / "thesis.tex").read_text() == "precious"
    assert main(["demo", "--out", str(tmp_path / "demo"), "--no-progress"]) == 0
    assert "made and cached" in capsys.readouterr().out
