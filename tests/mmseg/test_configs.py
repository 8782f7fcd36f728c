"""The configs in configs/sail parse, compose their _base_ files and follow the documented rules."""

from __future__ import annotations

from pathlib import Path

import pytest

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "sail").glob("*.py"))


def test_every_expected_config_exists():
    names = {p.stem for p in CONFIGS}
    assert {"sail-7b_linear_8xb2-40k_ade20k-512x512", "sail-7b_linear4-ms_8xb2-40k_ade20k-512x512",
            "sail-7b_upernet_8xb2-40k_ade20k-512x512", "sail-tiny_linear_1xb4-300_synthetic-64x64",
            "sail-tiny_linear4-ms_1xb4-300_synthetic-64x64", "sail-tiny_upernet_1xb4-300_synthetic-64x64"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_composes(path):
    from mmengine.config import Config

    cfg = Config.fromfile(str(path))
    assert cfg.model.backbone.type == "SAILBackbone"
    assert "sail_vision.mmseg" in cfg.custom_imports.imports
    assert "test_pipeline" in cfg and "tta_pipeline" in cfg and "tta_model" in cfg  # inference_model / --tta
    if path.stem.startswith("sail-7b"):
        assert cfg.model.backbone.dtype == "bfloat16" and cfg.model.backbone.frozen
        assert cfg.train_cfg.max_iters == 40000 and cfg.train_dataloader.batch_size == 2
        assert cfg.model.test_cfg.mode == "slide"
        assert all(v % 32 == 0 for v in (*cfg.model.test_cfg.crop_size, *cfg.model.test_cfg.stride))
    if "upernet" in path.stem:
        assert cfg.model.neck.type == "MultiLevelNeck" and cfg.model.decode_head.type == "UPerHead"
        assert len(cfg.model.neck.in_channels) == len(cfg.model.backbone.out_indices)
    else:
        head = cfg.model.decode_head
        assert head.type == "SAILLinearHead"
        assert len(head.in_channels) == len(head.in_index)
