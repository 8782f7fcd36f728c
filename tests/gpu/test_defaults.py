"""GPU defaults proved on the CPU: dtype 'auto' everywhere, pooled means kept in float32."""

from __future__ import annotations

import inspect

import torch

import sail_vision.devices as devices
from sail_vision import SailEncoder
from sail_vision.outputs import SailEncoding


def test_from_pretrained_defaults_to_auto(tiny_checkpoint, monkeypatch):
    assert inspect.signature(SailEncoder.from_pretrained).parameters["dtype"].default == "auto"
    assert SailEncoder.from_pretrained(tiny_checkpoint).dtype == torch.float32  # auto on the CPU: unchanged
    monkeypatch.setattr(devices, "auto_dtype", lambda device: "bfloat16")  # what an Ampere GPU resolves
    assert SailEncoder.from_pretrained(tiny_checkpoint).dtype == torch.bfloat16
    assert SailEncoder.from_pretrained(tiny_checkpoint, dtype="float32").dtype == torch.float32


def test_pca_cli_defaults_to_auto():
    from sail_vision.cli import build_parser

    args = build_parser().parse_args(["pca", "a.png", "--checkpoint", "c", "--out", "o.png"])
    assert args.dtype == "auto"


def test_mean_is_kept_in_float32_up_to_the_caller():
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(2, 4 * 5 + 2, 64, generator=gen).to(torch.bfloat16)
    encoding = SailEncoding({1: states}, [(4, 5), (4, 5)], add_cls=False, num_layers=1)
    mean = encoding.mean_patch(1)
    assert mean.dtype == torch.float32
    assert torch.equal(mean, states[:, 1:21].float().mean(1))  # no rounding to bfloat16 on the way
    assert encoding.pooled(1, "end").dtype == torch.bfloat16  # token states keep the activation dtype


def test_bfloat16_encoder_mean_equals_the_float32_mean_of_its_patch_states(tiny_checkpoint):
    encoder = SailEncoder.from_pretrained(tiny_checkpoint, dtype="bfloat16")
    gen = torch.Generator().manual_seed(0)
    items = [torch.randn(nh, nw, 3, 8, 8, generator=gen) for nh, nw in [(3, 4), (2, 2), (5, 1)]]
    for batching in ("packed", "grouped"):
        out = encoder.encode_patches(items, [2, -1], batching=batching)
        for b, (nh, nw) in enumerate(out.grids):
            patches = out.image_states(-1, b)[1:1 + nh * nw]
            assert patches.dtype == torch.bfloat16
            assert torch.equal(out.mean_patch(-1)[b], patches.float().mean(0))
