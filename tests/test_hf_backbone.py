"""SAIL as a transformers backbone: AutoConfig / AutoBackbone registration, feature maps equal to
encode()'s hidden states, and a transformers UperNet on SAIL that trains a few steps."""

from __future__ import annotations

import pytest
import torch

from sail_vision import SailEncoder

pytest.importorskip("transformers")
from transformers import (AutoBackbone, AutoConfig, DPTConfig, DPTForDepthEstimation, UperNetConfig,  # noqa: E402
                          UperNetForSemanticSegmentation)

from sail_vision.hf_backbone import SailBackbone, SailBackboneConfig  # noqa: E402

TOL = 1e-5


@pytest.fixture(scope="module")
def model_dir(reference_dir):
    return str(reference_dir / "model")


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))


def test_config_reads_the_architecture_and_stages(model_dir):
    config = SailBackboneConfig(checkpoint=model_dir, out_indices=[1, -1])
    assert config.num_hidden_layers == 4 and config.hidden_size == 256 and config.patch_size == 8
    assert config.stage_names == ["stem", "stage1", "stage2", "stage3", "stage4"]
    assert config.out_features == ["stage1", "stage4"]
    auto = AutoConfig.for_model("sail_vision", checkpoint=model_dir, out_features=["stage2"])
    assert isinstance(auto, SailBackboneConfig) and auto.out_indices == [2]
    again = SailBackboneConfig.from_dict(config.to_dict())
    assert again.out_indices == [1, -1] and again.checkpoint == model_dir


@pytest.mark.parametrize("out_indices, norm", [([1, -1], False), ([0, 2, 3], True), ([-2], False)])
def test_feature_maps_equal_encode(model_dir, pixels, out_indices, norm):
    backbone = AutoBackbone.from_config(SailBackboneConfig(checkpoint=model_dir, out_indices=out_indices, norm=norm))
    assert isinstance(backbone, SailBackbone)
    deepest = max(k % 5 for k in out_indices)
    assert backbone.encoder.num_blocks == deepest  # only the blocks the stages need were read
    reference = SailEncoder.from_pretrained(model_dir).encode_pixels(pixels, list(range(5)), norm=norm)
    out = backbone(pixels, output_hidden_states=True)
    assert backbone.channels == [256] * len(out_indices)
    for got, k in zip(out.feature_maps, [k % 5 for k in out_indices]):
        assert got.shape == (2, 256, 4, 6)
        assert (got - reference.patch_maps(k)).abs().max().item() <= TOL
    as_tuple = backbone(pixels, return_dict=False)
    assert len(as_tuple) == 1 and all(torch.equal(a, b) for a, b in zip(as_tuple[0], out.feature_maps))
    assert len(out.hidden_states) == deepest + 1
    for k, got in enumerate(out.hidden_states):
        assert (got - reference.layer(k)).abs().max().item() <= TOL


def test_frozen_encoder_stays_out_of_the_state_dict(model_dir):
    backbone = SailBackbone(SailBackboneConfig(checkpoint=model_dir, out_indices=[1]))
    assert not backbone.state_dict() and not list(backbone.parameters())
    trainable = SailBackbone(SailBackboneConfig(checkpoint=model_dir, out_indices=[1], frozen=False))
    local = SailEncoder.from_pretrained(model_dir, max_layer=1).state_dict()
    state = trainable.state_dict()
    assert set(state) == {f"sail_encoder.{k}" for k in local}
    assert all(torch.equal(state[f"sail_encoder.{k}"], v) for k, v in local.items())  # not re-initialised
    upernet = UperNetForSemanticSegmentation(UperNetConfig(
        backbone_config=SailBackboneConfig(checkpoint=model_dir, out_indices=[1], frozen=False), num_labels=2,
        hidden_size=16, auxiliary_channels=8, auxiliary_in_channels=256, pool_scales=[1]))
    inside = upernet.backbone.sail_encoder.state_dict()  # the head's post_init left SAIL's weights alone
    assert all(torch.equal(inside[k], v) for k, v in local.items())


def test_upernet_on_sail_trains(model_dir):
    torch.manual_seed(0)
    backbone_config = SailBackboneConfig(checkpoint=model_dir, out_indices=[1, 2, 3, 4])
    config = UperNetConfig(backbone_config=backbone_config, num_labels=3, hidden_size=32, auxiliary_channels=16,
                           pool_scales=[1, 2])
    model = UperNetForSemanticSegmentation(config)
    encoder = model.backbone.encoder
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    assert config.to_dict()["backbone_config"]["model_type"] == "sail_vision"
    assert isinstance(UperNetConfig.from_dict(config.to_dict()).backbone_config, SailBackboneConfig)

    g = torch.Generator().manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32, generator=g)
    labels = (pixels[:, 0] > 0).long() + (pixels[:, 1] > 0.5).long()  # 3 classes from the pixels
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    losses = []
    for _ in range(5):
        out = model(pixel_values=pixels, labels=labels)
        assert out.logits.shape == (2, 3, 32, 32)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())  # SAIL stays frozen


def test_bad_inputs_are_clear(model_dir):
    from sail_vision.errors import InputError, SailVisionError

    backbone = SailBackbone(SailBackboneConfig(checkpoint=model_dir, out_indices=[1]))
    with pytest.raises(InputError, match="multiple of the patch size 8"):
        backbone(torch.zeros(1, 3, 20, 16))
    with pytest.raises(SailVisionError, match="has no checkpoint"):
        SailBackbone(SailBackboneConfig())
    with pytest.raises(ValueError, match="out_indices must be valid"):
        SailBackboneConfig(checkpoint=model_dir, out_indices=[7])


def test_token_layout_and_dpt_on_sail(model_dir, pixels):
    """reshape_hidden_states=False: (B, 1 + h*w, D) with </vision> first, the layout DPT's neck reads."""
    config = SailBackboneConfig(checkpoint=model_dir, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
    reference = SailEncoder.from_pretrained(model_dir).encode_pixels(pixels, [2])
    tokens = SailBackbone(config)(pixels).feature_maps[1]
    assert tokens.shape == (2, 1 + 24, 256)
    assert (tokens[:, 0] - reference.end_token(2)).abs().max().item() <= TOL
    assert (tokens[:, 1:] - reference.patch_tokens(2)).abs().max().item() <= TOL

    torch.manual_seed(0)
    model = DPTForDepthEstimation(DPTConfig(backbone_config=config, neck_hidden_sizes=[16, 16, 16, 16],
                                            fusion_hidden_size=16, reassemble_factors=[1, 1, 1, 1]))
    target = torch.nn.functional.interpolate(pixels[:, :1].abs(), size=(128, 192)).squeeze(1)  # DPT upsamples x32
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(4):
        depth = model(pixel_values=pixels).predicted_depth
        assert depth.shape == (2, 128, 192)
        loss = torch.nn.functional.l1_loss(depth, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
