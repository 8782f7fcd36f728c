"""Shared fixtures for the mmseg tests: the synthetic dataset and configs pointed at temporary paths."""

from __future__ import annotations

import itertools
import json
import os
import pickle
from collections import OrderedDict
from pathlib import Path

import pytest
import torch

import sail_vision.mmseg  # noqa: F401  (registers the modules; installs the mmcv-lite stand-in)
from sail_vision.mmseg.synthetic import make_synthetic_dataset

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs" / "sail"
LINEAR = "linear_sail-tiny_1xb4-300_synthetic-64x64"
_RUN_IDS = itertools.count()


class _Touch:
    """Unpickling this runs ``os.system('touch MARKER')``: the kind of file a crafted checkpoint is."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _crafted_checkpoint(path, marker, *, zip_format: bool = True):
    """A checkpoint-shaped pickle that would create ``marker`` when loaded unsafely."""
    payload = {"meta": {}, "state_dict": OrderedDict(), "message_hub": _Touch(marker)}
    if zip_format:
        torch.save(payload, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    return path


@pytest.fixture(scope="session")
def crafted_checkpoint():
    """crafted_checkpoint(path, marker, zip_format=True) -> path: a .pth whose unpickling creates ``marker``."""
    return _crafted_checkpoint


@pytest.fixture(scope="session")
def seg_data_root(tmp_path_factory) -> Path:
    """24 training and 8 validation 64x64 images in ADE20K's layout (the 4 synthetic colour classes)."""
    return make_synthetic_dataset(tmp_path_factory.mktemp("synthetic_data"), num_train=24, num_val=8, seed=0)


@pytest.fixture(scope="session")
def demo_config(tiny_checkpoint, seg_data_root, tmp_path_factory) -> Path:
    """The demo config (configs/sail/<LINEAR>.py) pointed at the test checkpoint and data, as a file."""
    from mmengine.config import Config

    cfg = Config.fromfile(str(CONFIG_DIR / f"{LINEAR}.py"))
    cfg.model.backbone.checkpoint = str(tiny_checkpoint)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].dataset.data_root = str(seg_data_root)
    path = tmp_path_factory.mktemp("configs") / f"{LINEAR}.py"
    cfg.dump(str(path))
    return path


@pytest.fixture
def tiny_cfg(tiny_checkpoint, seg_data_root, tmp_path):
    """tiny_cfg(name, **cfg_options) -> an mmengine Config from configs/sail/<name>.py on the tiny
    checkpoint and the synthetic data, with its own work_dir / logger / visualizer names."""
    from mmengine.config import Config

    def build(name: str, **options):
        cfg = Config.fromfile(str(CONFIG_DIR / f"{name}.py"))
        run = next(_RUN_IDS)
        cfg.model.backbone.checkpoint = str(tiny_checkpoint)
        for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
            cfg[loader].dataset.data_root = str(seg_data_root)
        cfg.work_dir = str(tmp_path / f"run{run}")
        cfg.experiment_name = f"sail_mmseg_test_{run}"
        cfg.visualizer.name = f"sail_mmseg_visualizer_{run}"
        cfg.default_hooks.logger.interval = 1
        cfg.merge_from_dict(options)
        return cfg

    return build


def _logged_losses(work_dir) -> dict[int, float]:
    losses = {}
    for path in Path(work_dir).glob("*/vis_data/scalars.json"):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if "loss" in record:
                losses[record["step"]] = record["loss"]
    return losses


@pytest.fixture(scope="session")
def logged_losses():
    """logged_losses(work_dir) -> {iteration: loss} from the scalars a Runner wrote under work_dir."""
    return _logged_losses


def short_schedule(iters: int, checkpoint_every: int) -> dict:
    """Config overrides: train ``iters`` iterations, checkpoint every ``checkpoint_every``, no validation
    (the loop validates after the last iteration unless val_begin is beyond it)."""
    return dict(train_cfg=dict(max_iters=iters, val_interval=10 * iters, val_begin=10 * iters),
                param_scheduler=[dict(type="PolyLR", eta_min=0.0, power=1.0, by_epoch=False, begin=0, end=iters)],
                default_hooks=dict(checkpoint=dict(interval=checkpoint_every)))


@pytest.fixture(scope="session")
def schedule():
    """schedule(iters, checkpoint_every) -> config overrides for a short run."""
    return short_schedule


@pytest.fixture(scope="session")
def trained(tiny_checkpoint, seg_data_root, tmp_path_factory):
    """The tiny linear config trained 60 iterations (batch 4) by mmseg's Runner.

    Returns (runner, validation metrics, backbone weights before training); the work dir holds
    config.py and iter_60.pth.
    """
    from mmengine.config import Config
    from mmengine.runner import Runner

    cfg = Config.fromfile(str(CONFIG_DIR / f"{LINEAR}.py"))
    cfg.model.backbone.checkpoint = str(tiny_checkpoint)
    for loader in ("train_dataloader", "val_dataloader", "test_dataloader"):
        cfg[loader].dataset.data_root = str(seg_data_root)
    cfg.work_dir = str(tmp_path_factory.mktemp("trained"))
    cfg.experiment_name, cfg.visualizer.name = "sail_mmseg_trained", "sail_mmseg_trained_vis"
    cfg.merge_from_dict(short_schedule(60, 60))
    runner = Runner.from_cfg(cfg)
    before = {k: v.clone() for k, v in runner.model.backbone.encoder.state_dict().items()}
    runner.train()
    metrics = runner.val_loop.run()
    cfg.dump(f"{cfg.work_dir}/config.py")
    return runner, metrics, before
