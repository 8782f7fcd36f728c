"""Dense features with their labels: segmentation sources store each image's label map on exactly
the pixels of its patch features (fixed and native resolution), parted like the features."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
from PIL import Image

from sail_vision.extraction import extract
from sail_vision.feature_store import (MASK_OFFSETS_FILE, MASKS_FILE, FeatureStoreError, open_feature_dir,
                                       write_feature_dir)
from sail_vision.preprocessing import Preprocess, decode_mask

from feature_dirs import check_parted_targets, compare_feature_dirs, extract_command, kill, start_paused
from image_factory import save_rgb

P = 8  # the tiny checkpoint's patch size
OPTIONS = dict(layers=[-1], pools=["patch", "mean"], batch_size=2, workers=0, progress=False)
PALETTE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 30], [30, 220, 220]], np.uint8)


def _save_mask(path, labels):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(labels, dtype=np.uint8), mode="L").save(path)


def _patch_pair(images, masks, stem, grid, seed):
    """An image whose P x P patches are each one colour, the colour of the patch's class, and its mask."""
    rng = np.random.default_rng(seed)
    classes = rng.integers(0, len(PALETTE), size=grid)
    labels = np.kron(classes, np.ones((P, P), np.int64))
    path = images / f"{stem}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(PALETTE[labels]).save(path)
    _save_mask(masks / f"{stem}.png", labels)
    return labels


def _random_pair(images, masks, stem, width, height, seed, high=5):
    save_rgb(images / f"{stem}.png", width, height, seed=seed)
    labels = np.random.default_rng(seed).integers(0, high, size=(height, width))
    _save_mask(masks / f"{stem}.png", labels)
    return labels


@pytest.fixture
def patch_pairs(tmp_path):
    """Five patch-coloured images of three grids with their masks."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    labels = [_patch_pair(images, masks, f"img{i}", grid, seed=i)
              for i, grid in enumerate([(3, 4), (4, 3), (2, 2), (3, 4), (4, 4)])]
    return images, masks, labels


def _class_of_pixels(pixels: np.ndarray) -> np.ndarray:
    """The class whose palette colour each pixel has (-1 where none)."""
    match = (pixels[..., None, :] == PALETTE).all(-1)
    return np.where(match.any(-1), match.argmax(-1), -1)


# ---------------------------------------------------------------------------------- alignment
def test_native_masks_align_with_patch_features(tiny_checkpoint, patch_pairs, tmp_path):
    images, masks, labels = patch_pairs
    out = tmp_path / "native"
    extract(tiny_checkpoint, images, out, masks=masks, **OPTIONS)
    fd = open_feature_dir(out)
    assert fd.has_masks and fd.num_valid == 5
    assert fd.mask_info == {"file": MASKS_FILE, "layout": "rows", "offsets": MASK_OFFSETS_FILE, "dtype": "uint8",
                            "ignore_index": 255, "reduce_zero_label": False, "num_classes": None, "classes": None,
                            "resize": "nearest"}
    assert fd.manifest["masks"] == fd.mask_info
    offsets = np.load(out / MASK_OFFSETS_FILE)
    grids = fd.patch_grids()
    assert offsets.dtype == np.int64 and np.array_equal(np.diff(offsets), grids[:, 0] * grids[:, 1] * P * P)
    preprocess = Preprocess.create(P)
    for i, path in enumerate(fd.paths):
        mask = fd.mask(i)
        patches = fd.patch_maps("layer-4_patch", i)
        assert mask.dtype == np.uint8 and mask.shape == (patches.shape[0] * P, patches.shape[1] * P)
        assert np.array_equal(mask, labels[int(path[-5])])  # sizes are multiples of P: nothing resized
        pixels = preprocess.pixels(path).numpy()
        for r in range(patches.shape[0]):
            for c in range(patches.shape[1]):
                under = mask[r * P:(r + 1) * P, c * P:(c + 1) * P]
                assert (under == _class_of_pixels(pixels[r * P, c * P])).all()


def test_fixed_resolution_masks_align_under_a_crop(tiny_checkpoint, tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    labels = [_patch_pair(images, masks, f"img{i}", grid, seed=i) for i, grid in enumerate([(4, 6), (6, 4), (4, 4)])]
    out = tmp_path / "fixed"
    extract(tiny_checkpoint, images, out, masks=masks, resolution=32, **OPTIONS)
    fd = open_feature_dir(out)
    assert fd.mask_info["layout"] == "grid" and fd.mask_info["offsets"] is None
    assert np.load(out / MASKS_FILE).shape == (3, 32, 32)
    preprocess = Preprocess.create(P, 32)
    for i, path in enumerate(fd.paths):
        mask = fd.mask(i)
        assert mask.shape == (32, 32) and fd.patch_maps("layer-4_patch", i).shape[:2] == (4, 4)
        height, width = labels[i].shape  # shorter side 32 already: only the center crop
        top, left = (height - 32) // 2, (width - 32) // 2
        assert np.array_equal(mask, labels[i][top:top + 32, left:left + 32])
        assert np.array_equal(_class_of_pixels(preprocess.pixels(path).numpy()), mask)


@pytest.mark.parametrize("resolution", [None, 24, "16x24"])
def test_masks_equal_decode_mask_and_a_nearest_resize_by_hand(tiny_checkpoint, tmp_path, resolution):
    images, masks = tmp_path / "images", tmp_path / "masks"
    sizes = [(21, 13), (13, 30), (40, 17)]
    for i, (w, h) in enumerate(sizes):
        _random_pair(images, masks, f"img{i}", w, h, seed=i)
    out = tmp_path / "out"
    extract(tiny_checkpoint, images, out, masks=masks, resolution=resolution, **OPTIONS)
    fd = open_feature_dir(out)
    for i, (w, h) in enumerate(sizes):
        labels = Image.fromarray(decode_mask(masks / f"img{i}.png"))
        if resolution is None:  # upstream's rule: sides rounded up to multiples of P, aspect kept
            hand = np.asarray(labels.resize(_native_size(w, h), Image.NEAREST))
        elif resolution == 24:  # shorter side to 24, then the center 24 x 24
            scale = 24 / min(w, h)
            nw, nh = max(24, round(w * scale)), max(24, round(h * scale))
            left, top = (nw - 24) // 2, (nh - 24) // 2
            hand = np.asarray(labels.resize((nw, nh), Image.NEAREST).crop((left, top, left + 24, top + 24)))
        else:
            hand = np.asarray(labels.resize((24, 16), Image.NEAREST))
        assert np.array_equal(fd.mask(i), hand), (i, resolution)
        assert fd.mask(i).shape == tuple(s * P for s in fd.patch_maps("layer-4_patch", i).shape[:2])


def _native_size(w, h):
    import math

    long, short = max(w, h), min(w, h)
    new_long = math.ceil(long / P) * P
    new_short = math.ceil(int(new_long * short / long) / P) * P
    return (new_long, new_short) if w >= h else (new_short, new_long)


# ---------------------------------------------------------------------------------- label rules
def _ade(root, stems=4):
    base = root / "ADEChallengeData2016"
    labels = []
    for i in range(stems):
        stem = f"ADE_train_{i + 1:08d}"
        save_rgb(base / "images" / "training" / f"{stem}.jpg", 16 + 8 * (i % 2), 16, seed=i)
        values = np.random.default_rng(i).integers(0, 4, size=(16, 16 + 8 * (i % 2)))
        _save_mask(base / "annotations" / "training" / f"{stem}.png", values)
        labels.append(values)
    return labels


def test_ade20k_masks_follow_reduce_zero_label_and_record_it(tiny_checkpoint, tmp_path):
    labels = _ade(tmp_path / "ade")
    out = tmp_path / "out"
    extract(tiny_checkpoint, tmp_path / "ade", out, split="training", **OPTIONS)
    fd = open_feature_dir(out)
    info = fd.mask_info
    assert info["reduce_zero_label"] is True and info["num_classes"] == 150 and len(info["classes"]) == 150
    assert info["classes"][:2] == ["wall", "building"]
    for i, values in enumerate(labels):
        expected = np.where(values == 0, 255, values - 1).astype(np.uint8)
        assert np.array_equal(fd.mask(i), expected)  # 16 x 16 and 24 x 16: native size, nothing resized
    assert 255 in fd.mask(0) and fd.mask(0).max() == 255 and fd.mask(0)[fd.mask(0) != 255].max() <= 2


def test_pairs_can_ask_for_reduce_zero_label(tiny_checkpoint, tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    values = _random_pair(images, masks, "a", 16, 16, seed=1)
    plain, reduced = tmp_path / "plain", tmp_path / "reduced"
    extract(tiny_checkpoint, images, plain, masks=masks, **OPTIONS)
    extract(tiny_checkpoint, images, reduced, masks=masks, reduce_zero_label=True, **OPTIONS)
    assert np.array_equal(open_feature_dir(plain).mask(0), values)
    fd = open_feature_dir(reduced)
    assert fd.mask_info["reduce_zero_label"] is True
    assert np.array_equal(fd.mask(0), np.where(values == 0, 255, values - 1))
    assert fd.manifest["settings"]["inputs"]["reduce_zero_label"] is True


# ---------------------------------------------------------------------------------- parts
def test_parted_masks_equal_one_part_byte_for_byte(tiny_checkpoint, patch_pairs, tmp_path):
    images, masks, _ = patch_pairs
    check_parted_targets(tiny_checkpoint, images, tmp_path, OPTIONS, masks=masks)


def test_parted_fixed_resolution_masks_read_lazily(tiny_checkpoint, patch_pairs, tmp_path):
    images, masks, _ = patch_pairs
    one, lazy = tmp_path / "one", tmp_path / "lazy"
    extract(tiny_checkpoint, images, one, masks=masks, resolution=16, **OPTIONS)
    extract(tiny_checkpoint, images, lazy, masks=masks, resolution=16, part_size=2, consolidate=False, **OPTIONS)
    a, b = open_feature_dir(one), open_feature_dir(lazy)
    for i in range(5):
        assert np.array_equal(a.mask(i), b.mask(i)) and a.mask(i).shape == (16, 16)


# ---------------------------------------------------------------------------------- failures
def test_missing_unreadable_and_wrong_size_masks_are_recorded_failures(tiny_checkpoint, tmp_path):
    images, masks = tmp_path / "images", tmp_path / "masks"
    kept = [_random_pair(images, masks, f"img{i}", 16, 16, seed=i) for i in range(6)]
    (masks / "img1.png").unlink()  # missing
    _save_mask(masks / "img3.png", np.zeros((8, 16)))  # wrong size
    (masks / "img4.png").write_bytes(b"not a png at all")  # unreadable
    out = tmp_path / "out"
    result = extract(tiny_checkpoint, images, out, masks=masks, part_size=2, **OPTIONS)
    assert result.num_failed == 3
    fd = open_feature_dir(out)
    kinds = {r["index"]: r["kind"] for r in fd.failures}
    assert kinds == {1: "mask-missing", 3: "mask-size", 4: "mask-not-image"}
    assert list(np.flatnonzero(~fd.valid)) == [1, 3, 4]
    assert [int(p[-5]) for p in fd.paths] == [0, 2, 5]
    for i, row in enumerate([0, 2, 5]):  # numbered like patch_maps: valid rows only
        assert np.array_equal(fd.mask(i), kept[row])
    assert fd.mask(1, valid_only=False).shape == (0, 0)  # planned as a failure: no pixels
    with pytest.raises(IndexError):
        fd.mask(3)


# ---------------------------------------------------------------------------------- resume
def test_resume_after_a_kill_keeps_masks_identical(tiny_checkpoint, patch_pairs, tmp_path):
    images, masks, _ = patch_pairs
    reference = tmp_path / "reference"
    extract(tiny_checkpoint, images, reference, masks=masks, layers=[-1], pools=["patch"], batch_size=1,
            workers=0, progress=False, part_size=2)
    out = tmp_path / "killed"
    command = extract_command("--checkpoint", tiny_checkpoint, "--images", images, "--masks", masks, "--out", out,
                              "--pool", "patch", "--batch-size", 1, "--workers", 0, "--part-size", 2,
                              "--no-progress", "--commit-interval", "0.01")
    kill(start_paused(command, "extract:encoding", tmp_path / "marker"))
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    compare_feature_dirs(out, reference)


def test_resume_refuses_changed_masks(tiny_checkpoint, patch_pairs, tmp_path):
    images, masks, _ = patch_pairs
    out = tmp_path / "out"
    command = extract_command("--checkpoint", tiny_checkpoint, "--images", images, "--masks", masks, "--out", out,
                              "--pool", "patch", "--batch-size", 1, "--workers", 0, "--part-size", 2, "--no-progress")
    kill(start_paused(command, "extract:encoding", tmp_path / "marker"))
    (masks / "img2.png").rename(masks / "img2.tif")
    resumed = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 2 and "masks paired with the images changed" in resumed.stderr


# ---------------------------------------------------------------------------------- write_feature_dir
def test_write_feature_dir_with_masks_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    grid_masks = rng.integers(0, 4, size=(3, 16, 24)).astype(np.uint8)
    fd = write_feature_dir(tmp_path / "grid", {"layer-2_patch": np.zeros((3, 2, 3, 4), np.float16)},
                           masks=grid_masks, mask_meta={"reduce_zero_label": True, "num_classes": 4,
                                                        "classes": list("abcd")})
    assert fd.has_masks and fd.mask_info["layout"] == "grid" and fd.mask_info["num_classes"] == 4
    assert fd.mask_info["reduce_zero_label"] is True and fd.mask_info["classes"] == list("abcd")
    assert all(np.array_equal(fd.mask(i), grid_masks[i]) for i in range(3))
    ragged = [rng.integers(0, 4, size=s).astype(np.uint8) for s in [(16, 24), (8, 8), (24, 16)]]
    fd = write_feature_dir(tmp_path / "rows", {"layer-2_mean": np.zeros((3, 4), np.float32)}, masks=ragged,
                           patch_size=8, valid=[True, False, True])
    assert fd.mask_info["layout"] == "rows" and fd.mask_info["reduce_zero_label"] is False
    assert np.array_equal(fd.mask(1), ragged[2]) and np.array_equal(fd.mask(1, valid_only=False), ragged[1])
    assert np.array_equal(fd.patch_grids(valid_only=False), [[2, 3], [1, 1], [3, 2]])
    with pytest.raises(FeatureStoreError, match="patch_size"):
        write_feature_dir(tmp_path / "bad", {"x": np.zeros((3, 2))}, masks=ragged)
    plain = write_feature_dir(tmp_path / "plain", {"x": np.zeros((3, 2))})
    assert not plain.has_masks and plain.mask_info is None
    with pytest.raises(FeatureStoreError, match="no masks"):
        plain.mask(0)
