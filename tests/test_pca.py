"""PCA pictures: joint fitting, colour scaling, figures, and the `sail-vision pca` command."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sail_vision.cli import main
from sail_vision.errors import InputError
from sail_vision.pca import pca_rgb, render_pca_figure


def test_pca_colours_are_fitted_jointly_and_scaled_to_unit_range():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(4, 5, 16))
    shifted = base.copy()
    shifted[..., 0] += 10.0  # the second image differs along one direction
    maps = pca_rgb([base, shifted, base])
    assert [m.shape for m in maps] == [(4, 5, 3)] * 3
    assert all(m.min() >= 0 and m.max() <= 1 for m in maps)
    np.testing.assert_allclose(maps[0], maps[2], atol=1e-5)  # same features, same colours
    # The first component separates the images: their red channels do not overlap.
    assert maps[0][..., 0].max() < maps[1][..., 0].min() or maps[1][..., 0].max() < maps[0][..., 0].min()


def test_pca_rejects_bad_maps():
    with pytest.raises(InputError):
        pca_rgb([])
    with pytest.raises(InputError, match="same width"):
        pca_rgb([np.zeros((2, 2, 4)), np.zeros((2, 2, 5))])
    with pytest.raises(InputError, match="NaN"):
        pca_rgb([np.full((2, 2, 4), np.nan)])


def test_figure_has_one_row_per_image(tmp_path):
    images = [Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (20, 30))]
    colours = [np.zeros((3, 4, 3)), np.ones((3, 2, 3))]
    out = render_pca_figure(images, colours, tmp_path / "fig.png", ["a", "b"])
    two = Image.open(out).size
    one = Image.open(render_pca_figure(images[:1], colours[:1], tmp_path / "one.png")).size
    assert two[0] == one[0] and two[1] > 1.5 * one[1]
    with pytest.raises(InputError, match=".png"):
        render_pca_figure(images, colours, tmp_path / "fig.bmpx")


def _images(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i, size in enumerate([(32, 24), (24, 24)]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(paths[-1])
    return paths


def test_pca_command_from_images_and_from_an_extraction(tiny_checkpoint, tmp_path, capsys):
    paths = _images(tmp_path)
    code = main(["pca", *map(str, paths), "--checkpoint", str(tiny_checkpoint), "--layer", "-2",
                 "--out", str(tmp_path / "a.png")])
    assert code == 0 and "layer 3" in capsys.readouterr().out
    assert Image.open(tmp_path / "a.png").size[1] > 300

    from sail_vision.extraction import extract

    extract(tiny_checkpoint, tmp_path, tmp_path / "feats", pools=["patch", "mean"], layers=[2, -1], workers=0,
            progress=False)
    code = main(["pca", "--features", str(tmp_path / "feats"), "--out", str(tmp_path / "b.png"), "--limit", "1"])
    out = capsys.readouterr().out
    assert code == 0 and "layer-4_patch" in out and "1 image(s)" in out
    code = main(["pca", "--features", str(tmp_path / "feats"), "--layer", "3", "--out", str(tmp_path / "c.png")])
    assert code == 2 and "patch layers here: [2, 4]" in capsys.readouterr().err


def test_pca_command_needs_patch_features(tiny_checkpoint, tmp_path, capsys):
    from sail_vision.feature_store import write_feature_dir

    write_feature_dir(tmp_path / "pooled", {"layer-4_mean": np.zeros((2, 4))})
    code = main(["pca", "--features", str(tmp_path / "pooled"), "--out", str(tmp_path / "x.png")])
    assert code == 2 and "--pool patch" in capsys.readouterr().err
    code = main(["pca", "--checkpoint", str(tiny_checkpoint), "--out", str(tmp_path / "x.png")])
    assert code == 2 and "no IMAGE given" in capsys.readouterr().err


def test_pca_from_a_written_folder_without_paths(tmp_path, capsys):
    from sail_vision.feature_store import write_feature_dir

    rng = np.random.default_rng(0)
    write_feature_dir(tmp_path / "f", {"layer-2_patch": rng.normal(size=(3, 4, 5, 16)).astype(np.float32)})
    assert main(["pca", "--features", str(tmp_path / "f"), "--out", str(tmp_path / "p.png")]) == 0
    assert "3 image(s), layer-2_patch" in capsys.readouterr().out
