"""SAILBackbone over a list of images of different sizes: packed == one at a time, budgets, options,
and ``segment_images`` / ``sail-vision segment`` over mixed sizes == one image at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sail_vision import SailEncoder
from sail_vision.cli import main
from sail_vision.errors import InputError
from sail_vision.mmseg import SAILBackbone
from sail_vision.mmseg.config_checks import check_config
from sail_vision.mmseg.inference import load_segmentor, segment, segment_images
from sail_vision.packing import DEFAULT_MAX_BATCH_TOKENS, plan_packs

#: Pixel sizes for the tiny checkpoint's patch 8: a 1x1-patch image, a very wide (1 x 12) and a very tall
#: (12 x 1) one, sizes that are not multiples of the patch, two images of one grid (4 x 6) and a large one.
SIZES = [(8, 8), (8, 96), (96, 8), (30, 41), (32, 48), (17, 9), (24, 200), (64, 64)]


def _images(sizes=SIZES, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(3, h, w, generator=generator) for h, w in sizes]


@pytest.fixture(scope="module")
def images():
    return _images()


@pytest.fixture(scope="module")
def backbone(tiny_checkpoint):
    return SAILBackbone(str(tiny_checkpoint), out_indices=(1, -1), device="cpu")


@pytest.fixture(scope="module")
def one_at_a_time(backbone, images):
    """Each image's maps from the (1, 3, H, W) tensor path, one forward per image."""
    return [backbone(image[None]) for image in images]


class _Forwards:
    """Records the encoder's forwards: ('packed', [sequence lengths]) or ('batch', (B, nh, nw))."""

    def __init__(self, monkeypatch):
        self.calls = []
        packed, batch = SailEncoder._forward_packed, SailEncoder._forward_batch

        def record_packed(encoder, items, *args, **kwargs):
            self.calls.append(("packed", [int(i.shape[0] * i.shape[1]) + 2 for i in items]))
            return packed(encoder, items, *args, **kwargs)

        def record_batch(encoder, patches, *args, **kwargs):
            self.calls.append(("batch", tuple(patches.shape[:3])))
            return batch(encoder, patches, *args, **kwargs)

        monkeypatch.setattr(SailEncoder, "_forward_packed", record_packed)
        monkeypatch.setattr(SailEncoder, "_forward_batch", record_batch)


def _assert_same_maps(got, expected):
    assert len(got) == len(expected)
    for maps, reference in zip(got, expected):
        assert len(maps) == len(reference) == 2
        for a, b in zip(maps, reference):
            assert a.dtype == torch.float32 and a.shape == b.shape
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_packed_list_equals_one_image_at_a_time(backbone, images, one_at_a_time, monkeypatch):
    forwards = _Forwards(monkeypatch)
    got = backbone(images)
    assert backbone.batching == "packed" and backbone.max_batch_tokens == DEFAULT_MAX_BATCH_TOKENS
    _assert_same_maps(got, one_at_a_time)
    for maps, (h, w) in zip(got, SIZES):
        assert maps[0].shape == (1, 256, *backbone.output_size(h, w))
    assert [m[0].shape[-2:] for m in got][:3] == [(1, 1), (1, 12), (12, 1)]
    # Every image fits the default budget: one packed forward for all eight.
    assert forwards.calls == [("packed", [backbone.sequence_length(h, w) for h, w in SIZES])]


def test_packed_forwards_respect_the_token_budget(tiny_checkpoint, images, one_at_a_time, monkeypatch):
    budget = 60
    backbone = SAILBackbone(str(tiny_checkpoint), out_indices=(1, -1), device="cpu", max_batch_tokens=budget)
    lengths = [backbone.sequence_length(h, w) for h, w in SIZES]
    assert max(lengths) > budget  # the 3 x 25 and 8 x 8 images run alone
    forwards = _Forwards(monkeypatch)
    _assert_same_maps(backbone(images), one_at_a_time)
    assert all(kind == "packed" for kind, _ in forwards.calls)
    packs = [seq for _, seq in forwards.calls]
    assert packs == [[lengths[i] for i in pack] for pack in plan_packs(lengths, budget)]
    assert len(packs) > 2
    assert all(sum(seq) <= budget or len(seq) == 1 for seq in packs)


@pytest.mark.parametrize("batching", ["grouped", "single"])
def test_grouped_and_single_give_the_same_maps(tiny_checkpoint, images, one_at_a_time, batching, monkeypatch):
    backbone = SAILBackbone(str(tiny_checkpoint), out_indices=(1, -1), device="cpu", batching=batching)
    forwards = _Forwards(monkeypatch)
    _assert_same_maps(backbone(images), one_at_a_time)
    assert all(kind == "batch" for kind, _ in forwards.calls)
    grids = [backbone.output_size(h, w) for h, w in SIZES]
    if batching == "single":
        assert [shape for _, shape in forwards.calls] == [(1, *grid) for grid in grids]
    else:  # one batch per grid: the two 4 x 6 images share one
        assert sorted(shape for _, shape in forwards.calls) == sorted((grids.count(g), *g) for g in set(grids))


def test_tensor_batches_keep_running_as_one_forward(backbone, monkeypatch):
    pixels = torch.randn(3, 3, 30, 41, generator=torch.Generator().manual_seed(3))
    forwards = _Forwards(monkeypatch)
    maps = backbone(pixels)
    assert forwards.calls == [("batch", (3, 4, 6))]
    assert isinstance(maps, tuple) and maps[0].shape == (3, 256, 4, 6)
    _assert_same_maps(backbone(list(pixels)), [tuple(m[b:b + 1] for m in maps) for b in range(3)])


def test_unfrozen_backbone_trains_through_the_packed_path(tiny_checkpoint):
    backbone = SAILBackbone(str(tiny_checkpoint), out_indices=(1,), frozen=False, device="cpu")
    maps = backbone(_images([(8, 16), (16, 8)]))
    sum(m[0].sum() for m in maps).backward()
    assert backbone.encoder.vis_embed.weight.grad is not None


@pytest.mark.parametrize("arguments, match", [
    (dict(batching="padded"), "batching='padded': choose from 'packed', 'grouped', 'single'"),
    (dict(batching=None), "batching=None"),
    (dict(max_batch_tokens=0), "max_batch_tokens=0: use a positive"),
    (dict(max_batch_tokens=-4), "max_batch_tokens=-4"),
    (dict(max_batch_tokens=1.5), "max_batch_tokens=1.5"),
    (dict(max_batch_tokens="4096"), "max_batch_tokens='4096'"),
    (dict(max_batch_tokens=True), "max_batch_tokens=True"),
])
def test_bad_batching_options_are_one_line_errors(tiny_checkpoint, arguments, match):
    from mmengine.config import Config

    with pytest.raises(InputError, match=match) as built:
        SAILBackbone(str(tiny_checkpoint), **arguments)
    assert "\n" not in str(built.value)
    with pytest.raises(InputError, match=match):
        SAILBackbone.check_config(dict(type="SAILBackbone", checkpoint=str(tiny_checkpoint), **arguments))
    cfg = Config(dict(model=dict(backbone=dict(type="SAILBackbone", checkpoint=str(tiny_checkpoint), **arguments))))
    with pytest.raises(InputError, match=f"model.backbone: SAILBackbone {match}"):
        check_config(cfg)  # what the tools and `sail-vision segment` run before building anything


def test_bad_image_lists_are_one_line_errors(backbone):
    with pytest.raises(InputError, match="empty list"):
        backbone([])
    with pytest.raises(InputError, match=r"list of \(3, H, W\) images; the list holds \(1, 3, 8, 8\)"):
        backbone([torch.zeros(1, 3, 8, 8)])
    with pytest.raises(InputError, match="the list holds ndarray"):
        backbone([np.zeros((3, 8, 8))])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bfloat16_packed_list_matches_one_at_a_time(tiny_checkpoint, images):
    """On CUDA in bfloat16 packing takes the variable-length kernel where it exists; the maps agree with
    one forward per image up to bfloat16 rounding."""
    packed = SAILBackbone(str(tiny_checkpoint), out_indices=(-1,), device="cuda", dtype="bfloat16")
    single = SAILBackbone(str(tiny_checkpoint), out_indices=(-1,), device="cuda", dtype="bfloat16", batching="single")
    on_gpu = [image.cuda() for image in images]
    for (a,), (b,) in zip(packed(on_gpu), single(on_gpu)):
        assert a.shape == b.shape and a.device.type == "cuda" and a.dtype == torch.float32
        assert torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0) > 0.999


# --------------------------------------------------------------------------- inference over mixed sizes

#: uint8 RGB images; the tiny configs' test pipeline resizes each to fit 64 x 64 keeping its aspect, so
#: they reach the backbone as 64x64, 26x64, 64x19, 8x64 and 64x64 (grids 8x8, 4x8, 8x3, 1x8, 8x8).
PICTURE_SIZES = [(64, 64), (40, 100), (100, 30), (8, 64), (50, 50)]


def _pictures(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in PICTURE_SIZES]


@pytest.fixture(scope="module")
def segmentor_checkpoint(demo_config, tmp_path_factory):
    """The demo config's segmentor with a random head whose classes vary over the image, saved as a .pth."""
    from sail_vision.mmseg.datasets import SyntheticColourDataset

    model = load_segmentor(demo_config, None)
    torch.manual_seed(0)
    torch.nn.init.normal_(model.decode_head.conv_seg.weight, std=1.0)
    path = tmp_path_factory.mktemp("segmentor") / "random_head.pth"
    meta = dict(dataset_meta=dict(SyntheticColourDataset.METAINFO))
    torch.save(dict(meta=meta, state_dict=model.state_dict()), path)
    return path


@pytest.fixture(scope="module")
def segmentor(demo_config, segmentor_checkpoint):
    return load_segmentor(demo_config, segmentor_checkpoint)


def test_segment_images_of_mixed_sizes_equal_one_at_a_time(segmentor, monkeypatch):
    pictures = _pictures()
    expected = [segment(segmentor, picture) for picture in pictures]  # mmseg's inference_model, one by one
    forwards = _Forwards(monkeypatch)
    got = segment_images(segmentor, pictures)
    assert forwards.calls == [("packed", [66, 34, 26, 10, 66])]  # five sizes (four grids), one forward
    assert [p.shape for p in got] == [p.shape for p in expected] == PICTURE_SIZES
    for a, b in zip(got, expected):
        assert a.dtype == np.int64
        np.testing.assert_array_equal(a, b)
    assert len(np.unique(np.concatenate([p.ravel() for p in got]))) > 1  # not a constant answer


def test_segment_images_respects_the_backbone_budget(segmentor, monkeypatch):
    pictures = _pictures(seed=1)
    expected = [segment(segmentor, picture) for picture in pictures]
    monkeypatch.setattr(segmentor.backbone, "max_batch_tokens", 70)  # 66 + 34 + 26 + 10 + 66 tokens
    forwards = _Forwards(monkeypatch)
    got = segment_images(segmentor, pictures)
    assert all(sum(seq) <= 70 for kind, seq in forwards.calls if kind == "packed")
    assert len(forwards.calls) == len(plan_packs([66, 34, 26, 10, 66], 70))
    for a, b in zip(got, expected):
        np.testing.assert_array_equal(a, b)


def test_segment_command_over_several_images(demo_config, segmentor, segmentor_checkpoint, tmp_path, capsys):
    paths = []
    for i, picture in enumerate(_pictures(seed=2)):
        paths.append(tmp_path / f"picture{i}.png")
        Image.fromarray(picture).save(paths[-1])
    args = ["segment", *map(str, paths), "--config", str(demo_config), "--checkpoint", str(segmentor_checkpoint),
            "--out", str(tmp_path / "overlays"), "--save-labels", str(tmp_path / "labels")]
    assert main(args) == 0
    for path in paths:
        assert (tmp_path / "overlays" / path.name).is_file()
        labels = np.asarray(Image.open(tmp_path / "labels" / path.name))
        np.testing.assert_array_equal(labels, segment(segmentor, path))
    capsys.readouterr()
    twice = ["segment", str(paths[0]), str(paths[0]), "--config", str(demo_config), "--checkpoint",
             str(segmentor_checkpoint), "--out", str(tmp_path / "o")]
    assert main(twice) == 2
    assert "share the name(s) picture0" in capsys.readouterr().err
    same = args[:-4] + ["--out", str(tmp_path / "x"), "--save-labels", str(tmp_path / "x")]
    assert main(same) == 2
    assert "same folder" in capsys.readouterr().err
