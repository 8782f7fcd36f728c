"""extract -> probe --task segmentation -> tools/test.py, on learnable synthetic data and the tiny checkpoint.

The cached patch features are exactly what SAILBackbone computes in whole-image inference (same
images, same 64x64 resolution as the tiny config's test pipeline, layer-4_patch = out_indices [4]),
so the mIoU tools/test.py reports for the exported mmseg_head.pth must be the probe's val mIoU; and
with ``bn="batch"`` the probe's training steps must be mmseg's Runner's, loss for loss.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sail_vision.cli import main as cli
from sail_vision.probes import FeatureInput
from sail_vision.probes.seg_data import SegmentationData
from sail_vision.probes.seg_export import export_mmseg_checkpoint, mmseg_cfg_options
from sail_vision.probes.seg_heads import BatchNormHeads, SegmentationConfig, SegmentationHead
from sail_vision.probes.seg_train import train_seg_grid

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "sail" / "linear_sail-tiny_1xb4-300_synthetic-64x64.py"
FEATURE = "layer-4_patch"  # the tiny checkpoint has 4 blocks: hidden state 4 = the config's out_indices (-1,)
CLASSES = ("red", "green", "blue", "yellow")
SPLITS = (("training", "train", 16), ("validation", "val", 8))


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"sail_tools_{name}_e2e", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def extracted(tiny_checkpoint, tmp_path_factory):
    """The synthetic colour data (with some "other" = ignored pixels) extracted with --pool patch."""
    from sail_vision.mmseg.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("seg_e2e")
    data = make_synthetic_dataset(root / "data", num_train=16, num_val=8, seed=0)
    for split, _, count in SPLITS:
        annotations = data / "annotations" / split
        (annotations / "classes.txt").write_text("\n".join(CLASSES) + "\n")
        for i in range(0, count, 3):  # label 0 ("other", ignored) on a region not aligned with the patches
            path = annotations / f"synthetic_{split}_{i:05d}.png"
            labels = np.array(Image.open(path))
            labels[3:14, 5:30] = 0
            Image.fromarray(labels).save(path)
    for split, name, _ in SPLITS:
        code = cli(["extract", "--checkpoint", str(tiny_checkpoint), "--layout", "pairs",
                    "--images", str(data / "images" / split), "--masks", str(data / "annotations" / split),
                    "--reduce-zero-label", "--pool", "patch", "--layers", "-1", "--dtype", "float32",
                    "--save-dtype", "float32", "--device", "cpu", "--workers", "0", "--no-progress",
                    "--out", str(root / name)])
        assert code == 0
    return root, data


def _tools_test_miou(tiny_checkpoint, data, checkpoint, work_dir, name) -> float:
    meta = torch.load(checkpoint, map_location="cpu", weights_only=True)["meta"]["sail_vision"]
    _tool("test").main([str(CONFIG), str(checkpoint), "--work-dir", str(work_dir), "--cfg-options",
                        *mmseg_cfg_options(meta["config"]), f"model.backbone.checkpoint={tiny_checkpoint}",
                        f"test_dataloader.dataset.data_root={data}", f"experiment_name=seg_e2e_{name}",
                        f"visualizer.name=seg_e2e_vis_{name}"])
    logs = sorted(Path(work_dir).glob("*/*.json"))
    assert logs, "tools/test.py wrote no metrics"
    return json.loads(logs[-1].read_text().splitlines()[-1])["mIoU"]


@pytest.mark.parametrize("bn", ["fixed", "batch"])
def test_probe_val_miou_is_what_tools_test_reports(extracted, tiny_checkpoint, tmp_path, bn, capsys):
    root, data = extracted
    out = tmp_path / "probe"
    code = cli(["probe", "--task", "segmentation", "--train", str(root / "train"), "--val", str(root / "val"),
                "--features", FEATURE, "--lrs", "0.01,0.1", "--wds", "0.0001", "--optimizer", "adamw",
                "--epochs", "4", "--batch-size", "4", "--bn", bn, "--device", "cpu", "--quiet", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "tools/test.py CONFIG" in printed and "model.backbone.out_indices=[4]" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bn"] == bn and summary["mmseg"]["model.backbone.out_indices"] == [4]
    assert summary["mmseg"]["model.backbone.norm"] is False
    assert summary["mIoU"] > 80  # the colour classes are learnable
    miou = _tools_test_miou(tiny_checkpoint, data, out / "mmseg_head.pth", tmp_path / "test", bn)
    assert abs(miou - summary["mIoU"]) <= 0.5, (miou, summary["mIoU"])
    assert abs(miou - round(summary["mIoU"], 2)) <= 0.011  # in fact the same predictions


class _LossRecorder:
    def __init__(self):
        from mmengine.hooks import Hook

        losses = self.losses = []

        class Recorder(Hook):
            def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
                losses.append(float(outputs["loss"]))

        self.hook = Recorder()


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_batch_bn_training_equals_mmseg_runner_with_the_backbone(extracted, tiny_checkpoint, tmp_path, optimizer):
    """Same images in the same order, batch 4, no augmentation, the same initial head, the config's
    optimizer (AdamW lr 1e-2 wd 1e-4; or SGD momentum 0.9) and a cosine schedule over the steps."""
    from mmengine.config import Config
    from mmengine.runner import Runner

    root, data = extracted
    train = SegmentationData.from_folder(root / "train")
    steps, lr, wd = 4, 1e-2, 1e-4
    config = SegmentationConfig(lrs=[lr], weight_decays=[wd], optimizer=optimizer, epochs=1, batch_size=4, bn="batch",
                                device="cpu", seed=0)
    plan = [np.arange(i * 4, i * 4 + 4) for i in range(steps)]
    # the probe's initial head (mmseg's init: conv N(0, 0.01), BN gamma 1 beta 0), loaded by the Runner
    initial = BatchNormHeads(256, train.num_classes, [lr], [wd], config, seed=0).head(0)
    start = export_mmseg_checkpoint(SegmentationHead.from_tensors(FeatureInput((FEATURE,)), initial, [256]),
                                    tmp_path / "initial.pth")
    probe = train_seg_grid(train, [FeatureInput((FEATURE,))], np.arange(16), config, plans=[plan], progress=False)
    probe_losses = [float(step[FEATURE][0]) for step in probe.losses]

    cfg = Config.fromfile(str(CONFIG))
    cfg.model.backbone.checkpoint = str(tiny_checkpoint)
    cfg.train_dataloader.dataset.data_root = str(data)
    cfg.train_dataloader.dataset.pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations"),
                                             dict(type="PackSegInputs")]
    cfg.train_dataloader.sampler = dict(type="InfiniteSampler", shuffle=False)
    cfg.val_dataloader.dataset.data_root = cfg.test_dataloader.dataset.data_root = str(data)
    if optimizer == "sgd":
        cfg.optim_wrapper.optimizer = dict(type="SGD", lr=lr, momentum=0.9, weight_decay=wd)
    else:
        assert cfg.optim_wrapper.optimizer.type == "AdamW" and cfg.optim_wrapper.optimizer.lr == lr
        assert cfg.optim_wrapper.optimizer.weight_decay == wd
    cfg.param_scheduler = [dict(type="CosineAnnealingLR", T_max=steps, eta_min=0.0, by_epoch=False, begin=0,
                                end=steps)]
    cfg.train_cfg = dict(type="IterBasedTrainLoop", max_iters=steps, val_interval=100 * steps)
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", by_epoch=False, interval=100 * steps)
    cfg.load_from = str(start)
    cfg.work_dir = str(tmp_path / "runner")
    cfg.experiment_name, cfg.visualizer.name = f"seg_e2e_train_{optimizer}", f"seg_e2e_train_vis_{optimizer}"
    runner = Runner.from_cfg(cfg)
    names = [Path(p).stem for p in train.store.paths]
    dataset = runner.train_dataloader.dataset
    dataset.full_init()
    assert [Path(dataset.get_data_info(i)["img_path"]).stem for i in range(len(dataset))] == names  # same order
    recorder = _LossRecorder()
    runner.register_hook(recorder.hook, priority="LOWEST")
    runner.train()
    assert len(recorder.losses) == steps
    np.testing.assert_allclose(probe_losses, recorder.losses, rtol=0, atol=1e-4)
    assert probe_losses[-1] < probe_losses[0]
