"""SAILBackbone: maps equal the encoder's patch tokens; frozen means frozen."""

from __future__ import annotations

import pytest
import torch

from sail_vision import SailEncoder
from sail_vision.errors import CheckpointError, LayerIndexError
from sail_vision.mmseg import SAILBackbone


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))


def test_maps_equal_encoder_patch_tokens(tiny_checkpoint, tiny_encoder, pixels):
    backbone = SAILBackbone(str(tiny_checkpoint), out_indices=(-1, 1, 2))
    maps = backbone(pixels)
    assert backbone.out_indices == (4, 1, 2)
    assert len(maps) == 3
    encoding = tiny_encoder.encode_pixels(pixels, [4, 1, 2])
    for got, k in zip(maps, (4, 1, 2)):
        assert got.shape == (2, 256, 4, 6) and got.dtype == torch.float32
        torch.testing.assert_close(got, encoding.patch_maps(k), atol=1e-5, rtol=1e-5)


def test_sizes_not_a_multiple_of_the_patch_are_padded(tiny_checkpoint, tiny_encoder):
    image = torch.randn(1, 3, 30, 41, generator=torch.Generator().manual_seed(1))
    backbone = SAILBackbone(str(tiny_checkpoint), out_indices=-1)
    (got,) = backbone(image)
    assert got.shape == (1, 256, 4, 6)  # ceil(30 / 8), ceil(41 / 8)
    assert backbone.output_size(30, 41) == (4, 6)
    padded = torch.nn.functional.pad(image, (0, 7, 0, 2))
    torch.testing.assert_close(got, tiny_encoder.encode_pixels(padded, -1).patch_maps(-1), atol=1e-5, rtol=1e-5)


def test_only_blocks_up_to_the_deepest_index_are_loaded(tiny_checkpoint):
    backbone = SAILBackbone(str(tiny_checkpoint), out_indices=(2, 1))
    assert backbone.encoder.num_blocks == 2
    assert len(backbone.encoder.layers) == 2


def test_frozen_backbone(tiny_checkpoint, pixels):
    backbone = SAILBackbone(str(tiny_checkpoint), out_indices=(-1,))
    before = {k: v.clone() for k, v in backbone.encoder.state_dict().items()}
    assert list(backbone.parameters()) == []            # out of optimisers' and DDP's view
    assert backbone.state_dict() == {}                   # checkpoints do not store the frozen weights
    assert all(not p.requires_grad for p in backbone.encoder.parameters())
    backbone.train()
    assert backbone.training and not backbone.encoder.training
    backbone.init_weights()
    for name, value in backbone.encoder.state_dict().items():
        assert torch.equal(value, before[name]), name
    outputs = backbone(pixels.requires_grad_(True))
    assert not outputs[0].requires_grad


def test_unfrozen_backbone_trains(tiny_checkpoint, pixels):
    backbone = SAILBackbone(str(tiny_checkpoint), out_indices=(1,), frozen=False)
    params = list(backbone.parameters())
    assert params and all(p.requires_grad for p in params)
    assert any(k.startswith("_trainable_encoder.") for k in backbone.state_dict())
    backbone.train()
    assert backbone.encoder.training
    backbone(pixels)[0].sum().backward()
    assert backbone.encoder.vis_embed.weight.grad is not None


def test_bfloat16_compute_gives_float32_maps(tiny_checkpoint, tiny_encoder, pixels):
    backbone = SAILBackbone(str(tiny_checkpoint), out_indices=(-1,), dtype="bfloat16")
    assert backbone.encoder.dtype == torch.bfloat16
    (got,) = backbone(pixels)
    assert got.dtype == torch.float32
    reference = tiny_encoder.encode_pixels(pixels, -1).patch_maps(-1)
    assert torch.nn.functional.cosine_similarity(got.flatten(), reference.flatten(), dim=0) > 0.99


def test_bad_arguments_raise_clear_errors(tiny_checkpoint, tmp_path):
    with pytest.raises(CheckpointError, match="missing"):
        SAILBackbone(str(tmp_path / "missing"))
    with pytest.raises(LayerIndexError, match="out of range"):
        SAILBackbone(str(tiny_checkpoint), out_indices=(9,))
    with pytest.raises(CheckpointError, match="init_cfg"):
        SAILBackbone(str(tiny_checkpoint), init_cfg=dict(type="Pretrained", checkpoint="x.pth"))


def test_registered_in_mmseg(tiny_checkpoint):
    from mmseg.registry import MODELS

    backbone = MODELS.build(dict(type="SAILBackbone", checkpoint=str(tiny_checkpoint), out_indices=[0, -1]))
    assert isinstance(backbone, SAILBackbone) and backbone.out_indices == (0, 4)
    assert isinstance(backbone.encoder, SailEncoder)
