"""Opt-in JPEG draft decoding: DCT scaling before the bilinear resize, in the one decoder."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from sail_vision.extraction import extract
from sail_vision.extraction.results import ExtractionError
from sail_vision.preprocessing import Preprocess, decode_sized


def _photo(width, height, seed=0):
    """A smooth photo-like picture (gradients plus low-frequency noise) as JPEG bytes."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    noise = np.kron(rng.random((height // 16 + 1, width // 16 + 1, 3)), np.ones((16, 16, 1)))[:height, :width]
    rgb = np.stack([x, y, (x + y) / 2], -1) * 0.6 + noise * 0.4
    buffer = io.BytesIO()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_draft_decodes_reduced_but_keeps_the_exact_geometry():
    data = _photo(1024, 768)
    exact, draft = Preprocess.create(32, 224), Preprocess.create(32, 224, jpeg_draft=True)
    reduced, size = decode_sized(data, draft_size=lambda s: (299, 224))
    assert size == (1024, 768) and reduced.size == (512, 384)  # 1/2: the largest scale still >= 299 x 224
    a, b = exact.pixels(data).int(), draft.pixels(data).int()
    assert a.shape == b.shape == (224, 224, 3)
    assert 0 < (a - b).abs().float().mean() < 2.0  # close, not identical
    native_exact = Preprocess.create(32, None, max_tokens=64)
    native_draft = Preprocess.create(32, None, max_tokens=64, jpeg_draft=True)
    assert native_exact.pixels(data).shape == native_draft.pixels(data).shape  # grid from the full size


def test_draft_changes_nothing_where_it_cannot_apply():
    small = _photo(500, 375)  # 224 px: half of 500 x 375 is below 299 x 224, so no scaling
    draft = Preprocess.create(32, 224, jpeg_draft=True)
    assert torch.equal(Preprocess.create(32, 224).pixels(small), draft.pixels(small))
    png = io.BytesIO()
    Image.open(io.BytesIO(_photo(1024, 768))).save(png, "PNG")
    assert torch.equal(Preprocess.create(32, 224).pixels(png.getvalue()),
                       Preprocess.create(32, 224, jpeg_draft=True).pixels(png.getvalue()))


def test_draft_is_described_only_when_on():
    assert "jpeg_draft" not in Preprocess.create(32, 224).describe()  # exact folders describe as before
    assert Preprocess.create(32, 224, jpeg_draft=True).describe()["jpeg_draft"] is True


def test_masks_follow_the_full_size_under_draft():
    data = _photo(1024, 768)
    mask = np.zeros((768, 1024), np.uint8)
    mask[:, 512:] = 1
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, "PNG")
    pixels, labels = Preprocess.create(32, 224, jpeg_draft=True).pixels_and_mask(data, buffer.getvalue())
    exact_labels = Preprocess.create(32, 224).pixels_and_mask(data, buffer.getvalue())[1]
    assert pixels.shape[:2] == labels.shape and np.array_equal(labels, exact_labels)


def test_extract_records_draft_and_refuses_to_resume_with_another_choice(tiny_checkpoint, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(3):
        (images / f"{i}.jpg").write_bytes(_photo(160, 128, seed=i))
    out = tmp_path / "out"
    extract(tiny_checkpoint, images, out, resolution=32, jpeg_draft=True, workers=0, progress=False)
    import json

    assert json.loads((out / "manifest.json").read_text())["preprocessing"]["jpeg_draft"] is True
    with pytest.raises(ExtractionError, match="cannot resume with different settings.*jpeg_draft"):
        extract(tiny_checkpoint, images, out, resolution=32, resume=True, workers=0, progress=False)


def test_decoding_many_files_leaves_no_file_open(tmp_path):
    """The decoder returns single-frame images without copying them; every file is closed either way."""
    import os

    paths = []
    for i in range(40):
        paths.append(tmp_path / f"{i}.jpg")
        paths[-1].write_bytes(_photo(64, 48, seed=i))
    gif = tmp_path / "anim.gif"
    frames = [Image.new("RGB", (16, 16), colour) for colour in ("red", "blue")]
    frames[0].save(gif, save_all=True, append_images=frames[1:])
    before = len(os.listdir("/proc/self/fd"))
    pre = Preprocess.create(8, 32)
    images = [pre.pixels(str(p)) for p in paths] + [pre.pixels(str(gif)) for _ in range(5)]
    assert len(os.listdir("/proc/self/fd")) == before and len(images) == 45
    rgb, size = decode_sized(str(paths[0]))
    assert size == (64, 48) and np.asarray(rgb).shape == (48, 64, 3)  # usable after its file was closed
