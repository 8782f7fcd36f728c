"""Depth maps stored with the features: the same slot, geometry, parts and failure rules as segmentation
masks (``--depths`` / ``--layout nyu``), as float32 metres with holes (0) kept by nearest resizing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sail_vision.cli import main
from sail_vision.errors import InputError
from sail_vision.extraction import extract
from sail_vision.feature_store import MASKS_FILE, FeatureStoreError, open_feature_dir, write_feature_dir
from sail_vision.preprocessing import VIEW_PAD_COLOUR, BadImageError, Preprocess, decode_depth, view_rng

from feature_dirs import check_parted_targets
from image_factory import save_rgb

P = 8  # the tiny checkpoint's patch size
OPTIONS = dict(layers=[-1], pools=["patch"], batch_size=2, workers=0, progress=False)
PALETTE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 30], [0, 0, 0]], np.uint8)
#: Millimetres of each palette colour's patches; the last colour (black) is a hole: no measurement.
DEPTH_MM = np.array([1250, 2500, 3333, 9001, 0], np.uint16)


def _save_depth_png(path, millimetres):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(millimetres, dtype=np.uint16)).save(path)  # mode I;16


def _patch_pair(images, depths, stem, grid, seed):
    """An image whose P x P patches are each one colour, and its 16-bit depth PNG with that colour's depth
    (one colour is a hole). Returns the class of each pixel."""
    classes = np.kron(np.random.default_rng(seed).integers(0, len(PALETTE), size=grid), np.ones((P, P), np.int64))
    images.mkdir(parents=True, exist_ok=True)
    Image.fromarray(PALETTE[classes]).save(images / f"{stem}.png")
    _save_depth_png(depths / f"{stem}.png", DEPTH_MM[classes])
    return classes


def _metres(mm) -> np.ndarray:
    """mmseg's LoadDepthAnnotation arithmetic: float32(value) * 1e-3."""
    return np.asarray(mm).astype(np.float32) * 1e-3


def _class_of_pixels(pixels: np.ndarray) -> np.ndarray:
    match = (pixels[..., None, :] == PALETTE).all(-1)
    return np.where(match.any(-1), match.argmax(-1), -1)


@pytest.fixture
def depth_pairs(tmp_path):
    images, depths = tmp_path / "images", tmp_path / "depths"
    classes = [_patch_pair(images, depths, f"img{i}", grid, seed=i)
               for i, grid in enumerate([(3, 4), (4, 3), (2, 2), (3, 4), (4, 4)])]
    return images, depths, classes


# ---------------------------------------------------------------------------------- alignment
def test_native_depth_aligns_with_patch_features_and_keeps_holes(tiny_checkpoint, depth_pairs, tmp_path):
    images, depths, classes = depth_pairs
    out = tmp_path / "native"
    extract(tiny_checkpoint, images, out, depths=depths, **OPTIONS)
    fd = open_feature_dir(out)
    assert fd.target_kind == "depth" and fd.num_valid == 5
    info = fd.mask_info
    assert (info["kind"], info["dtype"], info["layout"], info["depth_scale"], info["resize"]) == \
        ("depth", "float32", "rows", 1000.0, "nearest")
    for i, path in enumerate(fd.paths):
        depth = fd.mask(i)
        patches = fd.patch_maps("layer-4_patch", i)
        assert depth.dtype == np.float32 and depth.shape == (patches.shape[0] * P, patches.shape[1] * P)
        expected = _metres(DEPTH_MM[classes[int(path[-5])]])
        assert np.array_equal(depth, expected)
        pixels = Preprocess.create(P).pixels(path).numpy()
        assert np.array_equal(depth, _metres(DEPTH_MM[_class_of_pixels(pixels)]))  # on the image's pixels
    assert any((fd.mask(i) == 0).any() for i in range(5))  # holes kept as 0


def test_fixed_resolution_depth_aligns_under_a_crop(tiny_checkpoint, tmp_path):
    images, depths = tmp_path / "images", tmp_path / "depths"
    classes = [_patch_pair(images, depths, f"img{i}", g, seed=i) for i, g in enumerate([(4, 6), (6, 4), (4, 4)])]
    out = tmp_path / "fixed"
    extract(tiny_checkpoint, images, out, depths=depths, resolution=32, **OPTIONS)
    fd = open_feature_dir(out)
    assert fd.mask_info["layout"] == "grid" and np.load(out / MASKS_FILE).dtype == np.float32
    preprocess = Preprocess.create(P, 32)
    for i, path in enumerate(fd.paths):
        height, width = classes[i].shape  # shorter side 32 already: only the center crop
        top, left = (height - 32) // 2, (width - 32) // 2
        assert np.array_equal(fd.mask(i), _metres(DEPTH_MM[classes[i][top:top + 32, left:left + 32]]))
        assert np.array_equal(fd.mask(i), _metres(DEPTH_MM[_class_of_pixels(preprocess.pixels(path).numpy())]))


@pytest.mark.parametrize("resolution", [None, 24, "16x24"])
def test_resized_depth_is_nearest_never_a_blend_across_holes(tiny_checkpoint, tmp_path, resolution):
    images, depths = tmp_path / "images", tmp_path / "depths"
    sizes = [(21, 13), (13, 30), (40, 17)]
    for i, (w, h) in enumerate(sizes):
        save_rgb(images / f"img{i}.png", w, h, seed=i)
        mm = np.random.default_rng(i).choice(DEPTH_MM, size=(h, w))  # every other pixel may be a hole
        _save_depth_png(depths / f"img{i}.png", mm)
    out = tmp_path / "out"
    extract(tiny_checkpoint, images, out, depths=depths, resolution=resolution, **OPTIONS)
    fd = open_feature_dir(out)
    for i in range(3):
        source = decode_depth(depths / f"img{i}.png")
        stored = fd.mask(i)
        hand = Image.fromarray(source, mode="F")
        w, h = sizes[i]
        if resolution is None:
            hand = hand.resize((stored.shape[1], stored.shape[0]), Image.NEAREST)
        elif resolution == 24:
            scale = 24 / min(w, h)
            nw, nh = max(24, round(w * scale)), max(24, round(h * scale))
            left, top = (nw - 24) // 2, (nh - 24) // 2
            hand = hand.resize((nw, nh), Image.NEAREST).crop((left, top, left + 24, top + 24))
        else:
            hand = hand.resize((24, 16), Image.NEAREST)
        assert np.array_equal(stored, np.asarray(hand))
        assert set(np.unique(stored)) <= set(np.unique(source))  # no value invented between a hole and a depth
        assert stored.shape == tuple(s * P for s in fd.patch_maps("layer-4_patch", i).shape[:2])


def test_npy_metres_and_other_png_scales(tiny_checkpoint, tmp_path):
    images, depths = tmp_path / "images", tmp_path / "depths"
    save_rgb(images / "a.png", 16, 16, seed=0)
    save_rgb(images / "b.png", 16, 16, seed=1)
    metres = np.random.default_rng(0).uniform(0.5, 80, size=(16, 16))
    metres[0, :5] = np.nan  # no measurement
    depths.mkdir()
    np.save(depths / "a.npy", metres)
    kitti = np.random.default_rng(1).integers(0, 20000, size=(16, 16)).astype(np.uint16)
    _save_depth_png(depths / "b.png", kitti)
    out = tmp_path / "out"
    extract(tiny_checkpoint, images, out, depths=depths, depth_scale=256, **OPTIONS)
    fd = open_feature_dir(out)
    assert fd.mask_info["depth_scale"] == 256.0
    assert np.array_equal(fd.mask(0), np.nan_to_num(metres, nan=0.0).astype(np.float32))
    assert np.array_equal(fd.mask(1), kitti.astype(np.float32) * (1 / 256))


def test_nyu_layout_reads_mmseg_tree(tiny_checkpoint, tmp_path):
    root = tmp_path / "nyu"
    for split, n in (("train", 3), ("test", 2)):
        for i in range(n):
            _patch_pair(root / "images" / split, root / "annotations" / split, f"scene_{i}", (2, 3), seed=i)
    out = tmp_path / "out"
    result = extract(tiny_checkpoint, root, out, layout="nyu", split="test", **OPTIONS)
    assert result.num_failed == 0
    fd = open_feature_dir(out)
    assert fd.num_valid == 2 and fd.target_kind == "depth"
    assert fd.manifest["settings"]["inputs"]["layout"] == "nyu"
    with pytest.raises(InputError, match="--split train or --split test"):
        extract(tiny_checkpoint, root, tmp_path / "x", layout="nyu", **OPTIONS)


# ---------------------------------------------------------------------------------- parts
def test_parted_depth_equals_one_part_byte_for_byte(tiny_checkpoint, depth_pairs, tmp_path):
    images, depths, _ = depth_pairs
    check_parted_targets(tiny_checkpoint, images, tmp_path, OPTIONS, depths=depths)


# ---------------------------------------------------------------------------------- failures
def test_missing_unreadable_wrong_size_and_bad_depth_maps_are_recorded_failures(tiny_checkpoint, tmp_path):
    images, depths = tmp_path / "images", tmp_path / "depths"
    kept = [_patch_pair(images, depths, f"img{i}", (2, 2), seed=i) for i in range(7)]
    (depths / "img1.png").unlink()  # missing
    _save_depth_png(depths / "img2.png", np.ones((8, 16)))  # wrong size
    (depths / "img3.png").write_bytes(b"not a png at all")  # unreadable
    Image.fromarray(np.ones((16, 16), np.uint8)).save(depths / "img4.png")  # 8-bit: not millimetres
    (depths / "img5.png").unlink()
    np.save(depths / "img5.npy", -np.ones((16, 16)))  # negative metres
    out = tmp_path / "out"
    result = extract(tiny_checkpoint, images, out, depths=depths, part_size=3, **OPTIONS)
    assert result.num_failed == 5
    fd = open_feature_dir(out)
    kinds = {r["index"]: r["kind"] for r in fd.failures}
    assert kinds == {1: "depth-missing", 2: "depth-size", 3: "depth-not-image", 4: "depth-unsupported-mode",
                     5: "depth-value"}
    details = {r["index"]: r["reason"] for r in fd.failures}
    assert details[2].startswith("depth map ") and "img2.png" in details[2]
    assert [int(p[-5]) for p in fd.paths] == [0, 6]
    for i, row in enumerate([0, 6]):
        assert np.array_equal(fd.mask(i), _metres(DEPTH_MM[kept[row]]))


def test_decode_depth_refuses_what_is_not_metres(tmp_path):
    with pytest.raises(BadImageError, match="float HxW metres"):
        decode_depth(np.ones((4, 4), np.uint16))
    with pytest.raises(BadImageError) as caught:
        decode_depth(np.full((4, 4), np.inf, np.float32))
    assert caught.value.kind == "depth-value"
    (tmp_path / "x.npy").write_bytes(b"junk")
    with pytest.raises(BadImageError) as caught:
        decode_depth(tmp_path / "x.npy")
    assert caught.value.kind == "depth-unreadable"


# ---------------------------------------------------------------------------------- views
def test_views_of_depth_take_the_image_geometry(tiny_checkpoint, tmp_path):
    images, depths = tmp_path / "images", tmp_path / "depths"
    for i, grid in enumerate([(8, 12), (12, 8)]):
        _patch_pair(images, depths, f"img{i}", grid, seed=i)
    out = tmp_path / "views"
    extract(tiny_checkpoint, images, out, depths=depths, views=2, views_seed=3, resolution="32x32",
            **{**OPTIONS, "batch_size": 1})
    fd = open_feature_dir(out)
    preprocess = Preprocess.create(P, "32x32")
    assert fd.num_valid == 4 and fd.target_kind == "depth"
    for row in range(4):
        image, view = divmod(row, 2)
        pixels, depth = preprocess.view_pixels_and_mask(images / f"img{image}.png", depths / f"img{image}.png",
                                                        view_rng(3, image, view), depth_scale=1000.0)
        assert np.array_equal(fd.mask(row), depth)
        pixels = pixels.numpy()
        classes = _class_of_pixels(pixels)  # bilinear blends at colour edges match no colour: skipped
        exact = classes >= 0
        assert exact.mean() > 0.5 and np.array_equal(depth[exact], _metres(DEPTH_MM[classes[exact]]))
        padded = (pixels == VIEW_PAD_COLOUR).all(-1)
        assert (depth[padded] == 0).all()  # padding is no measurement


# ---------------------------------------------------------------------------------- options and writer
@pytest.mark.parametrize("argv, message", [
    (["--layout", "nyu"], "--split train or --split test"),
    (["--depths", "DEPTHS", "--masks", "DEPTHS"], "--masks or --depths, not both"),
    (["--depths", "DEPTHS", "--depth-scale", "0"], "--depth-scale 0.0"),
    (["--depth-scale", "256"], "--depth-scale is a rule for depth maps"),
    (["--layout", "ade20k", "--depths", "DEPTHS"], "not the ade20k layout"),
])
def test_depth_options_fail_in_one_line(tiny_checkpoint, depth_pairs, tmp_path, capsys, argv, message):
    images, depths, _ = depth_pairs
    argv = [str(depths) if a == "DEPTHS" else a for a in argv]
    code = main(["extract", "--checkpoint", str(tiny_checkpoint), "--images", str(images), "--out",
                 str(tmp_path / "out"), "--no-progress", *argv])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err


def test_write_feature_dir_with_depth_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    maps = [rng.uniform(0, 10, size=s).astype(np.float32) for s in [(16, 24), (8, 8)]]
    fd = write_feature_dir(tmp_path / "rows", {"layer-2_mean": np.zeros((2, 4), np.float32)}, masks=maps,
                           patch_size=8, mask_meta={"depth_scale": 1000})
    assert fd.target_kind == "depth" and fd.mask_info["layout"] == "rows"
    assert all(np.array_equal(fd.mask(i), maps[i]) for i in range(2))
    grid = write_feature_dir(tmp_path / "grid", {"x": np.zeros((2, 2))}, masks=np.stack([maps[1], maps[1]]),
                             mask_meta={"depth_scale": 1000})
    assert grid.mask(1).dtype == np.float32 and grid.mask_info["layout"] == "grid"
    with pytest.raises(FeatureStoreError, match="finite metres"):
        write_feature_dir(tmp_path / "bad", {"x": np.zeros((1, 2))}, masks=[-maps[1]], mask_meta={"depth_scale": 1})
    assert write_feature_dir(tmp_path / "labels", {"x": np.zeros((1, 2))},
                             masks=[np.zeros((8, 8), np.uint8)]).target_kind == "labels"


def test_an_nyu_tree_read_without_its_layout_is_a_one_line_hint(tmp_path):
    from sail_vision.sources import resolve_inputs

    root = tmp_path / "nyu"
    _patch_pair(root / "images" / "train", root / "annotations" / "train", "scene", (2, 2), seed=0)
    for kwargs in ({}, {"split": "train"}, {"layout": "folder"}):
        with pytest.raises(InputError, match="--layout nyu --split train"):
            resolve_inputs(root, **kwargs)
    assert resolve_inputs(root, layout="nyu", split="train").description["depth"]["depth_scale"] == 1000.0
