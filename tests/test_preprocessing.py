"""Preprocessing: the native resize rule, fixed-size modes, input kinds and errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sail_vision import ImageError, image_to_patches, native_resize_size
from sail_vision.preprocessing import (IMAGENET_MEAN, IMAGENET_STD, decode_image, normalize_image,
                                       parse_resolution, pixels_to_patches, resize_image)


@pytest.mark.parametrize("size, p, want", [
    ((100, 75), 8, (104, 80)),
    ((640, 480), 8, (584, 440)),
    ((4000, 3000), 32, (2336, 1760)),
    ((75, 100), 8, (80, 104)),      # portrait mirrors landscape
    ((224, 224), 32, (224, 224)),   # exact multiples are kept
    ((33, 33), 32, (64, 64)),       # never shrunk below the next multiple
])
def test_native_resize_rule(size, p, want):
    assert native_resize_size(size, p) == want


def test_token_cap_is_respected():
    for size in [(5000, 10), (4097, 4097), (12000, 9000)]:
        w, h = native_resize_size(size, 32, max_tokens=256)
        assert w % 32 == 0 and h % 32 == 0 and (w // 32) * (h // 32) <= 256
    with pytest.raises(ValueError, match="too elongated"):
        native_resize_size((100000, 10), 32, max_tokens=16)
    with pytest.raises(ValueError, match="positive"):
        native_resize_size((0, 10), 32)


def test_patch_flattening_is_channel_row_column():
    pixels = torch.arange(3 * 4 * 6, dtype=torch.float32).reshape(3, 4, 6)
    patches = pixels_to_patches(pixels, 2)
    assert patches.shape == (2, 3, 3, 2, 2)
    assert torch.equal(patches[1, 2], pixels[:, 2:4, 4:6])
    assert patches[0, 1].flatten().tolist() == pixels[:, 0:2, 2:4].flatten().tolist()


def test_normalisation_constants():
    img = Image.new("RGB", (8, 8), (255, 0, 128))
    x = normalize_image(img)
    for c, value in enumerate((255, 0, 128)):
        want = (value / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert x[c].unique().item() == pytest.approx(want, abs=1e-6)


def test_input_kinds_agree(tmp_path):
    rng = np.random.default_rng(1)
    array = rng.integers(0, 256, size=(20, 28, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    ref = image_to_patches(tmp_path / "a.png", 8)
    assert ref.shape == (3, 4, 3, 8, 8)  # 28x20 -> 32x24
    assert torch.equal(image_to_patches(Image.fromarray(array), 8), ref)
    assert torch.equal(image_to_patches(array, 8), ref)
    gray = image_to_patches(array[:, :, 0], 8)
    assert torch.equal(gray, image_to_patches(Image.fromarray(array[:, :, 0]).convert("RGB"), 8))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA"])
def test_any_pil_mode_becomes_rgb(mode):
    img = Image.new("RGB", (16, 16), (10, 200, 30)).convert(mode)
    assert decode_image(img).mode == "RGB"
    assert image_to_patches(img, 8).shape == (2, 2, 3, 8, 8)


def test_fixed_resolutions():
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (60, 100, 3), dtype=np.uint8))
    crop = resize_image(img, 8, 48)
    assert crop.size == (48, 48)
    want = img.resize((80, 48), Image.BILINEAR).crop((16, 0, 64, 48))
    assert np.array_equal(np.asarray(crop), np.asarray(want))
    assert image_to_patches(img, 8, resolution="32x40").shape == (4, 5, 3, 8, 8)
    assert image_to_patches(img, 8, resolution=(16, 24)).shape == (2, 3, 3, 8, 8)
    assert parse_resolution("native") is None and parse_resolution("224") == 224
    for bad in ("abc", "0", "12x", -5):
        with pytest.raises(ValueError):
            parse_resolution(bad)
    with pytest.raises(ValueError, match="multiple of the patch size 8"):
        resize_image(img, 8, 50)


def test_unreadable_images_name_the_file(tmp_path):
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ImageError, match="bad.jpg: not an image"):
        image_to_patches(tmp_path / "bad.jpg", 8)
    with pytest.raises(ImageError, match="missing.png: no such file"):
        image_to_patches(tmp_path / "missing.png", 8)
    good = tmp_path / "t.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    (tmp_path / "trunc.png").write_bytes(good.read_bytes()[:60])
    with pytest.raises(ImageError, match="trunc.png"):
        image_to_patches(tmp_path / "trunc.png", 8)
    with pytest.raises(ImageError, match="uint8"):
        image_to_patches(np.zeros((8, 8, 3), dtype=np.float32), 8)
    with pytest.raises(ImageError, match="unsupported image input"):
        image_to_patches(123, 8)
