"""mmseg configs take a hub id as ``model.backbone.checkpoint``: the tiny demo config builds on it with
only the shards its out_indices need and trains a few steps on synthetic data."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .conftest import REPO

pytest.importorskip("mmseg")
CONFIG = Path(__file__).resolve().parents[2] / "configs" / "sail" / "linear_sail-tiny_1xb4-300_synthetic-64x64.py"


def _batch(seed: int):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample

    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(2, 3, 64, 64, generator=g)
    samples = []
    for i in range(2):
        sample = SegDataSample(metainfo={"img_shape": (64, 64), "pad_shape": (64, 64), "ori_shape": (64, 64)})
        label = (inputs[i, 0] > 0).long()[None]  # a class a linear head on patch features can learn
        sample.gt_sem_seg = PixelData(data=label)
        samples.append(sample)
    return inputs, samples


def test_tiny_config_on_a_hub_id_trains(hub, sharded_checkpoint):
    import sail_vision.mmseg  # noqa: F401
    from mmengine.config import Config
    from mmseg.registry import MODELS
    from mmseg.utils import register_all_modules

    from sail_vision.mmseg.backbone import SAILBackbone

    register_all_modules(init_default_scope=True)
    cfg = Config.fromfile(str(CONFIG))
    cfg.model.backbone.checkpoint = REPO
    cfg.model.backbone.out_indices = (1,)
    cfg.model.backbone.device = "cpu"
    assert SAILBackbone.check_config(cfg.model.backbone)["out_indices"] == (1,)
    assert not any(f.endswith(".safetensors") for f in hub.downloaded(REPO))  # checking reads no weights
    model = MODELS.build(cfg.model)
    assert model.backbone.encoder.checkpoint_repo == REPO and len(model.backbone.encoder.layers) == 1
    local = SAILBackbone(str(sharded_checkpoint), out_indices=(1,), device="cpu")
    for (name, a), (_, b) in zip(model.backbone.encoder.state_dict().items(), local.encoder.state_dict().items()):
        assert torch.equal(a, b), name

    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    losses = []
    for step in range(4):
        inputs, samples = _batch(step % 2)
        loss = sum(v for k, v in model.loss(inputs, samples).items() if "loss" in k)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[2] < losses[0] and losses[3] < losses[1]
