"""Preprocessing: the native resize rule, fixed-size modes, the one image decoder (every image
kind, through the API and through ``extract``), the mask decoder, and their errors."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from sail_vision import ImageError, image_to_patches, native_resize_size
from sail_vision.preprocessing import (DECODING_RULES, IGNORE_INDEX, IMAGENET_MEAN, IMAGENET_STD, BadImageError,
                                       Preprocess, decode_image, decode_mask, normalize_image, parse_resolution,
                                       pixels_to_patches, resize_image)

from image_factory import (save_rgb, write_bad_inputs, write_convertible_inputs, write_image_kinds,
                           write_refused_kinds)


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


# ---------------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("kind", ["corrupt", "truncated", "empty", "not-image", "too-large", "unsupported-mode"])
def test_bad_images_raise_with_their_kind(tmp_path, kind):
    path = write_bad_inputs(tmp_path)[kind]
    with pytest.raises(BadImageError) as info:
        decode_image(str(path))
    assert info.value.kind == kind and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_unreadable_and_special_files_are_failures_not_hangs(tmp_path, monkeypatch):
    import os

    os.mkfifo(tmp_path / "fifo.png")
    with pytest.raises(BadImageError, match="not a regular file") as info:
        decode_image(tmp_path / "fifo.png")  # opening a FIFO would block forever
    assert info.value.kind == "not-image"
    save_rgb(tmp_path / "locked.png", 8, 8)

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Image, "open", denied)  # chmod cannot lock root (who runs CI) out
    with pytest.raises(BadImageError, match="locked.png: cannot read \\(Permission denied\\)") as info:
        decode_image(tmp_path / "locked.png")
    assert info.value.kind == "unreadable"


def test_decompression_bomb_limit_is_configurable(tmp_path):
    save_rgb(tmp_path / "big.png", 40, 30)
    with pytest.raises(BadImageError, match="1200 pixels is over the decompression-bomb limit of 1000"):
        decode_image(str(tmp_path / "big.png"), max_pixels=1000)
    assert decode_image(str(tmp_path / "big.png"), max_pixels=1200).size == (40, 30)
    assert Image.MAX_IMAGE_PIXELS == 89_478_485  # the global limit is restored


@pytest.fixture(scope="module")
def image_kinds(tmp_path_factory):
    return write_image_kinds(tmp_path_factory.mktemp("kinds"))


KIND_NAMES = ["rgb-png", "rgb-jpeg", "rgb-bmp", "rgb-webp-lossless", "gray", "1-bit", "gray16-png", "gray16-png-trns",
              "gray16-tiff", "gray16b-tiff", "gray16-pgm", "rgb16-png", "rgba16-png", "la16-png", "rgba", "la",
              "rgb-trns", "gray-trns", "palette", "palette-alpha", "cmyk-tiff", "cmyk-jpeg", "ycbcr-tiff",
              "animated-gif", "multipage-tiff", "exif-orientation-6"]


def test_the_factory_writes_every_listed_kind(image_kinds):
    assert sorted(image_kinds) == sorted(KIND_NAMES)


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_image_kind_decodes_to_the_pixels_it_means(image_kinds, kind):
    path, expected = image_kinds[kind]
    from_path = decode_image(str(path))
    assert from_path.mode == "RGB" and from_path.size == (expected.shape[1], expected.shape[0])
    np.testing.assert_array_equal(np.asarray(from_path), expected)
    # The same file as bytes, and as the PIL image the user opened, decode the same way.
    np.testing.assert_array_equal(np.asarray(decode_image(path.read_bytes())), expected)
    with Image.open(path) as opened:
        np.testing.assert_array_equal(np.asarray(decode_image(opened)), expected)


def test_how_the_kinds_are_stored_in_their_files(image_kinds):
    """The factory really wrote what the kinds claim (else the decoding tests would prove little)."""
    modes = {k: Image.open(image_kinds[k][0]) for k in ("gray16-png", "gray16b-tiff", "gray16-pgm", "rgb16-png",
                                                          "palette-alpha", "rgb-trns", "cmyk-tiff", "ycbcr-tiff",
                                                          "animated-gif", "multipage-tiff", "exif-orientation-6")}
    assert modes["gray16-png"].mode == "I;16" and modes["gray16b-tiff"].mode == "I;16B"
    assert modes["gray16-pgm"].mode == "I" and modes["rgb16-png"].tile[0].args == "RGB;16B"
    assert modes["palette-alpha"].mode == "P" and "transparency" in modes["palette-alpha"].info
    assert modes["rgb-trns"].info["transparency"] == (1, 2, 3)
    assert (modes["cmyk-tiff"].mode, modes["ycbcr-tiff"].mode) == ("CMYK", "YCbCr")
    assert modes["animated-gif"].n_frames == 3 and modes["multipage-tiff"].n_frames == 3
    assert modes["exif-orientation-6"].getexif()[0x0112] == 6
    for image in modes.values():
        image.close()


def test_16_bit_gray_and_16_bit_rgb_of_one_picture_decode_alike(tmp_path):
    from image_factory import png16

    gray = np.random.default_rng(3).integers(0, 65536, (12, 16)).astype(np.uint16)
    gray[0, :3] = (65535, 40000, 255)  # white, a value a clipping convert('RGB') would make white, near black
    png16(tmp_path / "gray.png", gray)
    png16(tmp_path / "rgb.png", np.repeat(gray[..., None], 3, axis=2))
    as_gray = np.asarray(decode_image(tmp_path / "gray.png"))
    np.testing.assert_array_equal(as_gray, np.asarray(decode_image(tmp_path / "rgb.png")))
    assert as_gray[0, :3, 0].tolist() == [255, 156, 0]
    assert as_gray.std() > 50


@pytest.mark.parametrize("kind", ["float-tiff", "int32-tiff", "int32-small-values-tiff"])
def test_images_of_unknown_meaning_are_refused(tmp_path, kind):
    path = write_refused_kinds(tmp_path)[kind]
    with pytest.raises(BadImageError) as info:
        decode_image(path)
    assert info.value.kind == "unsupported-mode" and str(path) in str(info.value)


def test_in_memory_images_are_judged_by_their_declared_mode():
    values = np.random.default_rng(4).integers(0, 65536, (8, 8)).astype(np.uint16)
    sixteen = Image.fromarray(values)  # I;16 declares its range
    np.testing.assert_array_equal(np.asarray(decode_image(sixteen))[..., 0], values >> 8)
    with pytest.raises(BadImageError, match="in-memory image.*declares no white level") as info:
        decode_image(sixteen.convert("I"))  # mode I made in memory: 0..255? 0..65535? unknown
    assert info.value.kind == "unsupported-mode"
    for mode in ("LAB", "HSV", "F"):
        with pytest.raises(BadImageError) as info:
            decode_image(Image.new(mode, (4, 4)))
        assert info.value.kind == "unsupported-mode"
    premultiplied = Image.new("RGBA", (4, 4), (200, 100, 50, 128)).convert("RGBa")
    np.testing.assert_array_equal(np.asarray(decode_image(premultiplied))[0, 0],
                                  np.asarray(decode_image(Image.new("RGBA", (4, 4), (200, 100, 50, 128))))[0, 0])


@pytest.mark.parametrize("array", [np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.uint16),
                                   np.zeros((8, 8), bool), np.zeros((8, 8, 3), np.int64), np.zeros((8, 8, 2), np.uint8),
                                   np.zeros((0, 8, 3), np.uint8), np.zeros((2, 8, 8, 3), np.uint8)])
def test_arrays_other_than_uint8_images_are_refused(array):
    with pytest.raises(BadImageError, match=f"dtype {array.dtype} shape") as info:
        decode_image(array)
    assert info.value.kind == "unsupported-mode"


def test_uint8_arrays_decode_like_the_same_pixels_in_a_file(tmp_path):
    rgba = np.random.default_rng(5).integers(0, 256, (8, 10, 4)).astype(np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(np.asarray(decode_image(rgba)), np.asarray(decode_image(tmp_path / "a.png")))
    np.testing.assert_array_equal(np.asarray(decode_image(rgba[..., :1])), np.asarray(decode_image(rgba[..., 0])))


def test_decoding_rules_are_recorded_by_preprocess():
    described = Preprocess.create(8).describe()
    assert described["decoding"] == DECODING_RULES
    assert json.loads(json.dumps(described)) == described
    described["decoding"]["version"] = -1  # a copy: callers cannot change the rules
    assert DECODING_RULES["version"] != -1
    for topic in ("16-bit", "32-bit integer", "alpha", "exif_orientation", "multi_frame", "arrays"):
        assert DECODING_RULES[topic]


def test_docs_list_every_decoding_rule():
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[1] / "docs" / "inputs.md").read_text()
    for rule in DECODING_RULES:
        if rule not in ("version", "decoder"):
            assert f"| `{rule}` |" in docs, rule


def test_convertible_inputs_used_by_the_extraction_tests_are_right(tmp_path):
    for path, expected in write_convertible_inputs(tmp_path).values():
        np.testing.assert_array_equal(np.asarray(decode_image(path)), expected)


def test_every_image_kind_gives_the_same_features_through_the_api_and_extract(tiny_checkpoint, tiny_encoder,
                                                                               image_kinds, tmp_path):
    """One image path: ``SailEncoder.encode(path)`` and ``extract`` agree byte for byte on every kind."""
    from sail_vision.extraction import extract
    from sail_vision.feature_store import open_feature_dir

    refused = write_refused_kinds(tmp_path / "refused")
    paths = [path for path, _ in image_kinds.values()] + list(refused.values())
    (tmp_path / "list.txt").write_text("".join(f"{p}\n" for p in paths))
    result = extract(tiny_checkpoint, tmp_path / "list.txt", tmp_path / "out", pools=["mean", "patch"],
                     save_dtype="float32", batch_size=1, workers=0, progress=False)
    assert result.num_valid == len(image_kinds)
    failures = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert {(f["path"], f["kind"]) for f in failures} == {(str(p), "unsupported-mode") for p in refused.values()}
    features = open_feature_dir(tmp_path / "out")
    assert features.paths == [str(p) for p, _ in image_kinds.values()]
    for row, path in enumerate(features.paths):
        expected = tiny_encoder.encode(path, [-1])
        assert features.feature("layer-4_mean")[row].tobytes() == expected.mean_patch(-1)[0].numpy().tobytes(), path
        patches = features.patch_maps("layer-4_patch", row)
        assert patches.reshape(-1, 256).tobytes() == expected.patch_tokens(-1)[0].numpy().tobytes(), path
    for path in refused.values():
        with pytest.raises(BadImageError, match="unsupported|declares no white level|floating-point"):
            tiny_encoder.encode(path)


# ---------------------------------------------------------------------------------- masks
def _save_mask(path, labels, mode):
    image = Image.fromarray(labels) if mode is None else Image.fromarray(labels, mode=mode)
    image.save(path)
    return path


def test_mask_modes_give_label_values(tmp_path):
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 151, (12, 16)).astype(np.uint8)
    np.testing.assert_array_equal(decode_mask(_save_mask(tmp_path / "l.png", labels, "L")), labels)
    palette = Image.fromarray(labels, mode="P")
    palette.putpalette(rng.integers(0, 256, 768).astype(np.uint8).tolist())
    palette.save(tmp_path / "p.png")  # colours are for display; the indices are the labels
    np.testing.assert_array_equal(decode_mask(tmp_path / "p.png"), labels)
    np.testing.assert_array_equal(decode_mask((tmp_path / "p.png").read_bytes()), labels)
    binary = rng.integers(0, 2, (12, 16)).astype(bool)
    np.testing.assert_array_equal(decode_mask(_save_mask(tmp_path / "b.png", binary, None)), binary.astype(np.uint8))
    wide = rng.integers(0, 3000, (12, 16)).astype(np.uint16)
    decoded = decode_mask(_save_mask(tmp_path / "w.png", wide, None))
    assert decoded.dtype == np.uint16
    np.testing.assert_array_equal(decoded, wide)
    gray_rgb = np.repeat(labels[..., None], 3, axis=2)
    np.testing.assert_array_equal(decode_mask(_save_mask(tmp_path / "g.png", gray_rgb, None)), labels)
    np.testing.assert_array_equal(decode_mask(labels), labels)


@pytest.mark.parametrize("case, kind", [("colour", "mask-colour"), ("jpeg", "mask-lossy"),
                                        ("rgba", "mask-unsupported-mode"), ("float", "mask-unsupported-mode"),
                                        ("missing", "mask-missing"),
                                        ("corrupt", "mask-not-image"), ("array", "mask-unsupported-mode")])
def test_unusable_masks_are_refused_with_mask_kinds(tmp_path, case, kind):
    labels = np.random.default_rng(7).integers(0, 10, (8, 8, 3)).astype(np.uint8)
    target = {"colour": lambda p: _save_mask(p.with_suffix(".png"), labels, None),
              "jpeg": lambda p: _save_mask(p.with_suffix(".jpg"), labels[..., 0], "L"),
              "rgba": lambda p: _save_mask(p.with_suffix(".png"), np.dstack([labels, labels[..., :1]]), "RGBA"),
              "float": lambda p: _save_mask(p.with_suffix(".tif"), labels[..., 0].astype(np.float32), "F"),
              "missing": lambda p: p.with_suffix(".png"),
              "corrupt": lambda p: (p.with_suffix(".png").write_text("no"), p.with_suffix(".png"))[1],
              "array": lambda p: labels.astype(np.int32)}[case](tmp_path / "mask")
    with pytest.raises(BadImageError) as info:
        decode_mask(target)
    assert info.value.kind == kind and "\n" not in str(info.value)


def test_reduce_zero_label_size_and_class_checks(tmp_path):
    labels = np.array([[0, 1, 2, 150], [255, 254, 3, 0]], dtype=np.uint8)
    reduced = decode_mask(labels, reduce_zero_label=True, num_classes=254)
    np.testing.assert_array_equal(reduced, [[IGNORE_INDEX, 0, 1, 149], [IGNORE_INDEX, 253, 2, IGNORE_INDEX]])
    with pytest.raises(BadImageError, match="label 253 is not a class of 150") as info:
        decode_mask(labels, reduce_zero_label=True, num_classes=150)
    assert info.value.kind == "mask-label"
    with pytest.raises(BadImageError, match="mask is 4x2 but its image is 4x3") as info:
        decode_mask(labels, expected_size=(4, 3))
    assert info.value.kind == "mask-size"
    with pytest.raises(BadImageError, match="needs labels <= 255, found 300"):
        decode_mask(np.full((2, 2), 300, np.uint16), reduce_zero_label=True)


def test_reduce_zero_label_matches_mmseg(tmp_path):
    import sail_vision.mmseg.compat  # noqa: F401  (mmcv-lite shim before mmseg)
    from mmseg.datasets.transforms import LoadAnnotations

    labels = np.random.default_rng(8).integers(0, 256, (16, 24)).astype(np.uint8)
    labels[0, :3] = (0, 255, 1)
    Image.fromarray(labels, mode="L").save(tmp_path / "m.png")
    results = LoadAnnotations(reduce_zero_label=True)({"seg_map_path": str(tmp_path / "m.png"),
                                                       "reduce_zero_label": True, "seg_fields": []})
    np.testing.assert_array_equal(decode_mask(tmp_path / "m.png", reduce_zero_label=True), results["gt_seg_map"])
