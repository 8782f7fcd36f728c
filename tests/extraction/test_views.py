"""``--views K``: seeded mmseg-style augmented training views of image + mask pairs, one row each,
the same bytes however the rows are cut into parts (``preprocessing.augment_pair``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sail_vision.cli import main
from sail_vision.errors import InputError
from sail_vision.extraction import extract
from sail_vision.extraction.results import ExtractionError
from sail_vision.feature_store import open_feature_dir
from sail_vision.preprocessing import IGNORE_INDEX, VIEW_PAD_COLOUR, Preprocess, augment_pair, view_rng

from feature_dirs import compare_feature_dirs

P = 8  # the tiny checkpoint's patch size
PALETTE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 30], [30, 220, 220]], np.uint8)
BLACK = np.array([0, 0, 0], np.uint8)  # the colour of the ignored region (no class, not the pad colour)
# batch_size 1: every view encoded alone, so its features do not depend on its batch neighbours
OPTIONS = dict(layers=[-1], pools=["patch", "mean"], batch_size=1, batching="grouped", workers=0, progress=False,
               resolution="32x32")


def _block_pair(images, masks, stem, size, seed, block=8, ignore=False):
    """An image of ``block`` x ``block`` squares, each one palette colour (its class), and its mask;
    with ``ignore`` the top-left quarter is black and labelled 255."""
    width, height = size
    rng = np.random.default_rng(seed)
    labels = np.kron(rng.integers(0, len(PALETTE), size=(height // block, width // block)),
                     np.ones((block, block), np.int64))
    pixels = PALETTE[labels]
    if ignore:
        labels[:height // 2, :width // 2] = IGNORE_INDEX
        pixels[:height // 2, :width // 2] = BLACK
    for folder, array, mode in ((images, pixels, "RGB"), (masks, labels, "L")):
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(array.astype(np.uint8), mode=mode).save(folder / f"{stem}.png")
    return labels


@pytest.fixture
def pairs(tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    for i, size in enumerate([(96, 64), (64, 96), (80, 80)]):
        _block_pair(images, masks, f"img{i}", size, seed=i, ignore=i == 2)
    return images, masks


def _classes(pixels: np.ndarray) -> np.ndarray:
    """The class of each pixel whose colour is exactly a palette colour; -1 elsewhere, -2 for black."""
    match = (pixels[..., None, :] == PALETTE).all(-1)
    classes = np.where(match.any(-1), match.argmax(-1), -1)
    return np.where((pixels == BLACK).all(-1), -2, classes)


def _check_aligned(pixels: np.ndarray, mask: np.ndarray) -> None:
    """Every pixel of pure class colour is labelled with that class, black ones are ignored, pad is ignored."""
    classes = _classes(pixels)
    pure = classes >= 0
    assert (pure | (classes == -2)).mean() > 0.2  # much of a view is inside squares (bilinear mixes near edges)
    assert np.array_equal(mask[pure], classes[pure])
    assert (mask[classes == -2] == IGNORE_INDEX).all()
    assert set(np.unique(mask)) <= set(range(len(PALETTE))) | {IGNORE_INDEX}
    padded = (pixels == VIEW_PAD_COLOUR).all(-1)
    assert (mask[padded] == IGNORE_INDEX).all()


# ---------------------------------------------------------------------------------- augment_pair
def _pair(size=(64, 48), seed=0, ignore=False):
    width, height = size
    rng = np.random.default_rng(seed)
    labels = np.kron(rng.integers(0, len(PALETTE), size=(height // 8, width // 8)), np.ones((8, 8), np.int64))
    pixels = PALETTE[labels]
    if ignore:
        labels[:height // 2, :width // 2] = IGNORE_INDEX
        pixels[:height // 2, :width // 2] = BLACK
    return Image.fromarray(pixels), labels.astype(np.uint8)


def test_augment_pair_keeps_image_and_mask_on_one_geometry():
    image, labels = _pair(ignore=True)
    seen_ignore = 0
    for seed in range(12):
        view, mask = augment_pair(image, labels, view_rng(seed, 0, 0), (32, 48))
        assert view.size == (48, 32) and mask.shape == (32, 48) and mask.dtype == np.uint8
        _check_aligned(np.asarray(view), mask)
        seen_ignore += int((_classes(np.asarray(view)) == -2).any())
    assert seen_ignore > 0  # the ignored region was in some views, and stayed 255 there


def test_augment_pair_is_a_function_of_the_generator():
    image, labels = _pair()
    a = augment_pair(image, labels, view_rng(3, 5, 1), (32, 32))
    b = augment_pair(image, labels, view_rng(3, 5, 1), (32, 32))
    assert np.array_equal(np.asarray(a[0]), np.asarray(b[0])) and np.array_equal(a[1], b[1])
    others = [augment_pair(image, labels, view_rng(*key), (32, 32)) for key in [(4, 5, 1), (3, 6, 1), (3, 5, 2)]]
    assert all(not np.array_equal(np.asarray(o[0]), np.asarray(a[0])) for o in others)


def test_the_flip_flips_image_and_mask_together():
    image, labels = _pair(size=(64, 64))
    kwargs = dict(scale=(64, 64), ratio_range=(1.0, 1.5))  # squares of 8-12 pixels: crops are not symmetric
    for seed in range(4):
        kept = augment_pair(image, labels, view_rng(seed, 0, 0), (32, 32), flip_prob=0.0, **kwargs)
        flipped = augment_pair(image, labels, view_rng(seed, 0, 0), (32, 32), flip_prob=1.0, **kwargs)
        assert np.array_equal(np.asarray(flipped[0]), np.asarray(kept[0])[:, ::-1])
        assert np.array_equal(flipped[1], kept[1][:, ::-1])
        assert not np.array_equal(flipped[1], kept[1])
    flips = [np.array_equal(augment_pair(image, labels, view_rng(seed, 0, 0), (32, 32), **kwargs)[1],
                            augment_pair(image, labels, view_rng(seed, 0, 0), (32, 32), flip_prob=1.0, **kwargs)[1])
             for seed in range(40)]
    assert 8 < sum(flips) < 32  # prob 0.5


def test_small_resized_images_are_padded_bottom_right_with_ignore():
    image, labels = _pair(size=(64, 48))
    # scale (40, 30) x 1: the image becomes 40 x 30, smaller than the 48 x 64 crop
    view, mask = augment_pair(image, labels, view_rng(0, 0, 0), (48, 64), scale=(40, 30), ratio_range=(1.0, 1.0),
                              flip_prob=0.0)
    pixels = np.asarray(view)
    assert (mask[30:] == IGNORE_INDEX).all() and (mask[:, 40:] == IGNORE_INDEX).all()
    assert (pixels[30:] == VIEW_PAD_COLOUR).all() and (pixels[:, 40:] == VIEW_PAD_COLOUR).all()
    assert (mask[:30, :40] != IGNORE_INDEX).all()


def _crop_ratio(mask):
    values, counts = np.unique(mask, return_counts=True)
    counts = counts[values != IGNORE_INDEX]
    return counts.max() / counts.sum() if len(counts) > 1 else 1.0


def test_cat_max_ratio_redraws_crops_dominated_by_one_class():
    # 64 x 64, no resize; class 1 in the 12 left columns, class 0 elsewhere: a 32 x 32 crop is balanced
    # enough (class 1 over 8 of its 32 columns) only when its left edge is at x <= 3, 4 of 33 offsets.
    labels = np.zeros((64, 64), np.uint8)
    labels[:, :12] = 1
    image = Image.fromarray(PALETTE[labels])
    kwargs = dict(scale=(64, 64), ratio_range=(1.0, 1.0), flip_prob=0.0)
    balanced = {ratio: 0 for ratio in (0.75, 1.0)}
    for seed in range(60):
        for ratio in balanced:
            _, mask = augment_pair(image, labels, view_rng(seed, 0, 0), (32, 32), cat_max_ratio=ratio, **kwargs)
            balanced[ratio] += _crop_ratio(mask) < 0.75
        # replay the draws: the crop kept is the first balanced one of draws 0..9, else draw 10 (as mmseg)
        rng = view_rng(seed, 0, 0)
        rng.random()  # the resize ratio
        lefts = [(rng.integers(0, 33), int(rng.integers(0, 33)))[1] for _ in range(11)]
        left = next((x for x in lefts[:10] if x <= 3), lefts[10])
        _, mask = augment_pair(image, labels, view_rng(seed, 0, 0), (32, 32), **kwargs)
        assert np.array_equal(mask, labels[:32, left:left + 32])
    assert balanced[1.0] <= 12 < 30 <= balanced[0.75]


# ---------------------------------------------------------------------------------- extraction
def test_views_are_rows_with_aligned_masks(tiny_checkpoint, pairs, tmp_path):
    images, masks = pairs
    out = tmp_path / "views"
    extract(tiny_checkpoint, images, out, masks=masks, views=3, views_seed=7, **OPTIONS)
    fd = open_feature_dir(out)
    assert fd.num_valid == 9 and fd.mask_info["layout"] == "grid"
    names = sorted(p.name for p in images.iterdir())
    assert [p.rsplit("/", 1)[1] for p in fd.paths] == [f"{n}#view={k}" for n in names for k in range(3)]
    views = fd.manifest["views"]
    assert views["count"] == 3 and views["seed"] == 7 and views["pipeline"]["random_crop"]["cat_max_ratio"] == 0.75
    assert fd.manifest["settings"]["views"] == views
    preprocess = Preprocess.create(P, "32x32")
    for row, path in enumerate(fd.paths):
        image, k = path.rsplit("#view=", 1)
        pixels, mask = preprocess.view_pixels_and_mask(image, masks / Path(image).name, view_rng(7, row // 3, int(k)))
        assert np.array_equal(fd.mask(row), mask)
        assert fd.patch_maps("layer-4_patch", row).shape[:2] == (4, 4)
        _check_aligned(pixels.numpy(), fd.mask(row))
    for i in range(3):  # the views of one image differ, in pixels (hence masks or features) and features
        maps = [np.asarray(fd.patch_maps("layer-4_patch", 3 * i + k)) for k in range(3)]
        assert not np.array_equal(maps[0], maps[1]) and not np.array_equal(maps[1], maps[2])
    # img2's ignored (black) quarter stays 255 wherever a view shows it: checked by _check_aligned
    from sail_vision.probes.segmentation import SegmentationData

    from types import SimpleNamespace

    rows = SimpleNamespace(manifest=fd.manifest, store=fd, num_images=fd.num_valid)
    groups = SegmentationData.image_groups(rows)  # the probe keeps an image's views on one side of its split
    assert groups.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]


def test_same_seed_same_bytes_across_runs_and_part_sizes_other_seed_differs(tiny_checkpoint, pairs, tmp_path):
    images, masks = pairs
    dirs = {name: tmp_path / name for name in ("one", "again", "parted", "other")}
    extract(tiny_checkpoint, images, dirs["one"], masks=masks, views=2, **OPTIONS)
    extract(tiny_checkpoint, images, dirs["again"], masks=masks, views=2, **OPTIONS)
    extract(tiny_checkpoint, images, dirs["parted"], masks=masks, views=2, part_size=3, **OPTIONS)
    extract(tiny_checkpoint, images, dirs["other"], masks=masks, views=2, views_seed=1, **OPTIONS)
    compare_feature_dirs(dirs["one"], dirs["again"])
    manifests = {n: json.loads((dirs[n] / "manifest.json").read_text()) for n in ("one", "parted")}
    assert manifests["parted"]["parts"]["count"] == 2  # 6 rows in parts of 3: image 1's views split
    for name, manifest in manifests.items():  # apart from the part plan, the same bytes
        manifest["parts"] = manifest["settings"]["part_size"] = None
        (dirs[name] / "manifest.json").write_text(json.dumps(manifest))
    compare_feature_dirs(dirs["one"], dirs["parted"])
    a, b = open_feature_dir(dirs["one"]), open_feature_dir(dirs["other"])
    assert b.manifest["views"]["seed"] == 1
    assert any(not np.array_equal(a.mask(i), b.mask(i)) for i in range(6))
    with pytest.raises(ExtractionError, match="different settings"):
        extract(tiny_checkpoint, images, dirs["again"], masks=masks, views=2, views_seed=3, resume=True, **OPTIONS)


def test_without_views_settings_are_unchanged(tiny_checkpoint, pairs, tmp_path):
    images, masks = pairs
    out = tmp_path / "plain"
    extract(tiny_checkpoint, images, out, masks=masks, **OPTIONS)
    manifest = json.loads((out / "manifest.json").read_text())
    assert "views" not in manifest and "views" not in manifest["settings"]
    assert not any("#view=" in p for p in open_feature_dir(out).paths)


@pytest.mark.parametrize("extra, message", [
    ([], "--views needs masks"),
    (["--masks", "MASKS", "--resolution", "native"], "--views needs a fixed --resolution"),
])
def test_views_without_masks_or_fixed_resolution_are_one_line_errors(tiny_checkpoint, pairs, tmp_path, capsys,
                                                                     extra, message):
    images, masks = pairs
    extra = [str(masks) if x == "MASKS" else x for x in extra]
    if "--resolution" not in extra:
        extra += ["--resolution", "32x32"]
    code = main(["extract", "--checkpoint", str(tiny_checkpoint), "--images", str(images), "--out",
                 str(tmp_path / "o"), "--views", "2", "--workers", "0", "--no-progress", *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    with pytest.raises(InputError, match="needs"):
        extract(tiny_checkpoint, images, tmp_path / "p", views=2, **{**OPTIONS, "resolution": None}, masks=masks)

