"""SAILBackbone: maps equal the encoder's patch tokens; frozen means frozen; conversions never copy SAIL."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sail_vision import SailEncoder
from sail_vision.errors import CheckpointError, InputError, LayerIndexError
from sail_vision.mmseg import SAILBackbone
from sail_vision.packing import DEFAULT_MAX_BATCH_TOKENS

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "sail"


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


# --------------------------------------------------------------------------- conversions and devices

@pytest.fixture
def segmentor(tiny_checkpoint):
    """An EncoderDecoder (SAIL backbone + linear head) built from the tiny demo config's model."""
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(str(CONFIG_DIR / "linear_sail-tiny_1xb4-300_synthetic-64x64.py"))
    cfg.model.backbone.checkpoint = str(tiny_checkpoint)
    return MODELS.build(cfg.model)


def _weights(encoder) -> dict:
    return {name: (t.device, t.dtype, t.data_ptr()) for name, t in encoder.state_dict().items()}


@pytest.mark.parametrize("convert", ["half", "to_float16", "float", "bfloat16", "double", "to_cpu",
                                     "cpu", "share_memory"])
def test_module_conversions_leave_the_frozen_encoder_alone(segmentor, convert):
    encoder = segmentor.backbone.encoder
    before = _weights(encoder)
    {"half": lambda m: m.half(), "to_float16": lambda m: m.to(torch.float16), "float": lambda m: m.float(),
     "bfloat16": lambda m: m.bfloat16(), "double": lambda m: m.double(), "to_cpu": lambda m: m.to("cpu"),
     "cpu": lambda m: m.cpu(), "share_memory": lambda m: m.share_memory()}[convert](segmentor)
    assert segmentor.backbone.encoder is encoder
    assert _weights(encoder) == before  # same device, same dtype, same storage: nothing was copied
    if convert in ("half", "to_float16"):
        assert segmentor.decode_head.conv_seg.weight.dtype == torch.float16  # the head did convert


def test_deepcopy_shares_the_frozen_encoder(segmentor):
    import copy

    clone = copy.deepcopy(segmentor)
    assert clone.backbone.encoder is segmentor.backbone.encoder
    assert clone.decode_head.conv_seg.weight.data_ptr() != segmentor.decode_head.conv_seg.weight.data_ptr()
    unfrozen = SAILBackbone(str(segmentor.backbone.encoder.checkpoint_path), out_indices=(1,), frozen=False)
    assert copy.deepcopy(unfrozen).encoder is not unfrozen.encoder  # trainable weights are copied as usual


def test_device_argument(tiny_checkpoint):
    assert SAILBackbone(str(tiny_checkpoint), device="cpu").encoder.device == torch.device("cpu")
    auto = SAILBackbone(str(tiny_checkpoint)).encoder.device
    expected = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    assert auto == expected
    with pytest.raises(InputError, match="SAILBackbone device='tpu'"):
        SAILBackbone(str(tiny_checkpoint), device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA available: False"):
            SAILBackbone(str(tiny_checkpoint), device="cuda")


def test_check_config_validates_without_reading_weights(tiny_checkpoint, monkeypatch):
    def no_reading(*args, **kwargs):
        raise AssertionError("check_config must not read weights")

    monkeypatch.setattr(SailEncoder, "from_pretrained", no_reading)
    settings = SAILBackbone.check_config(dict(type="SAILBackbone", checkpoint=str(tiny_checkpoint), out_indices=[-1, 2],
                                              dtype="bf16", device="cpu"))
    assert settings == {"out_indices": (4, 2), "dtype": torch.bfloat16, "device": torch.device("cpu"),
                        "batching": "packed", "max_batch_tokens": DEFAULT_MAX_BATCH_TOKENS}
    with pytest.raises(InputError, match="unexpected keyword argument 'depth'.*checkpoint, out_indices"):
        SAILBackbone.check_config(dict(checkpoint=str(tiny_checkpoint), depth=3))
    with pytest.raises(InputError, match="missing a required argument: 'checkpoint'"):
        SAILBackbone.check_config(dict(out_indices=(1,)))
    with pytest.raises(LayerIndexError):
        SAILBackbone.check_config(dict(checkpoint=str(tiny_checkpoint), out_indices=(9,)))


def test_outputs_under_cpu_bfloat16_autocast_equal_outputs_without_it(tiny_checkpoint, pixels):
    """The frozen backbone computes in its configured dtype whatever autocast the caller runs under.

    Relies on SailEncoder opting out of autocast (the encoder's work, issue 14); the backbone adds no
    second guard.
    """
    backbone = SAILBackbone(str(tiny_checkpoint), out_indices=(1, -1), device="cpu")
    expected = backbone(pixels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = backbone(pixels)
    for a, b in zip(got, expected):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=0, rtol=0)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@cuda
def test_cuda_encoder_is_read_straight_to_the_current_device(tiny_checkpoint, monkeypatch):
    reads = []
    original = SailEncoder.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        reads.append(torch.device(kwargs["device"]))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(SailEncoder, "from_pretrained", classmethod(recording))
    backbone = SAILBackbone(str(tiny_checkpoint), dtype="bfloat16")  # device='auto'
    current = torch.device("cuda", torch.cuda.current_device())
    assert reads == [current] and backbone.encoder.device == current


@cuda
def test_cuda_conversions_keep_dtype_and_move_only_on_device_change(segmentor, pixels):
    segmentor.cpu()
    encoder = segmentor.backbone.encoder
    assert encoder.device.type == "cpu"
    segmentor.cuda()
    assert encoder.device.type == "cuda" and encoder.dtype == torch.float32
    before = _weights(encoder)
    segmentor.half()
    segmentor.to(torch.bfloat16)
    assert _weights(encoder) == before
    maps = segmentor.backbone.float()(pixels.cuda())
    assert maps[0].device.type == "cuda" and maps[0].dtype == torch.float32
    segmentor.to("cpu")
    assert encoder.device.type == "cpu" and encoder.dtype == torch.float32


@cuda
def test_cuda_bfloat16_autocast_leaves_a_float32_backbone_in_float32(tiny_checkpoint, pixels):
    backbone = SAILBackbone(str(tiny_checkpoint), out_indices=(-1,), device="cuda")
    expected = backbone(pixels.cuda())
    with torch.autocast("cuda", dtype=torch.float16):
        got = backbone(pixels.cuda())
    torch.testing.assert_close(got[0], expected[0], atol=0, rtol=0)


# --------------------------------------------------------------------------- device discipline (issue 21)
def _no_cuda_context(monkeypatch, device_count=2):
    """CUDA 'available' with ``device_count`` GPUs, and any call that would create a context raises."""
    def context(*args, **kwargs):
        raise AssertionError("a CUDA context was created")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: device_count)
    for name in ("current_device", "set_device", "init", "_lazy_init", "get_device_capability",
                 "is_bf16_supported", "device"):
        monkeypatch.setattr(torch.cuda, name, context)


def test_checking_a_config_creates_no_cuda_context(tiny_checkpoint, monkeypatch):
    _no_cuda_context(monkeypatch)
    settings = SAILBackbone.check_config(dict(type="SAILBackbone", checkpoint=str(tiny_checkpoint)))
    assert settings["device"] == torch.device("cuda") and settings["dtype"] == "auto"
    assert SAILBackbone.check_config(dict(checkpoint=str(tiny_checkpoint), device="cuda:1"))["device"] == \
        torch.device("cuda", 1)


def test_the_rank_device_is_resolved_when_built_from_local_rank(monkeypatch):
    from sail_vision.mmseg import backbone as module

    _no_cuda_context(monkeypatch)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert module._rank_device(torch.device("cuda")) == torch.device("cuda", 1)
    assert module._rank_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert module._rank_device(torch.device("cuda")) == torch.device("cuda", 3)


def test_default_dtype_is_auto(tiny_checkpoint, monkeypatch):
    import sail_vision.devices as devices

    assert SAILBackbone(str(tiny_checkpoint), device="cpu").compute_dtype == torch.float32
    monkeypatch.setattr(devices, "auto_dtype", lambda device: "float16")  # what a pre-Ampere GPU resolves
    backbone = SAILBackbone(str(tiny_checkpoint), device="cpu")
    assert backbone.compute_dtype == torch.float16 and backbone.encoder.dtype == torch.float16


def test_input_on_another_device_is_an_error_not_a_weight_copy(tiny_checkpoint):
    backbone = SAILBackbone(str(tiny_checkpoint), device="cpu")
    with pytest.raises(InputError, match="input on meta but SAIL's weights are on cpu"):
        backbone(torch.zeros(1, 3, 16, 16, device="meta"))
    with pytest.raises(InputError, match="input on meta but SAIL's weights are on cpu"):
        backbone([torch.zeros(3, 16, 16, device="meta")])
    assert backbone.encoder.device == torch.device("cpu")
