"""The classification probe under mmengine's Runner (sail_vision.mmseg.classification): tools/train.py trains,
saves, resumes; tools/test.py evaluates; it shares reading, labels, the standardiser and the metric with the probes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sail_vision.feature_store import write_feature_dir
from sail_vision.probes.standardize import Standardizer

ROOT = Path(__file__).resolve().parents[2]
DEMO_CONFIG = ROOT / "configs" / "probes" / "linear_probe_demo.py"


def _demo_like_features(root: Path) -> Path:
    """A feature folder laid out like `sail-vision demo`'s (root/features, china*/flower* file names)."""
    rng = np.random.default_rng(0)
    names = [f"china_{i}.jpg" for i in range(6)] + [f"flower_{i}.png" for i in range(6)]
    centres = np.where(np.array([n.startswith("china") for n in names])[:, None], 2.0, -2.0)
    features = (centres + rng.normal(0, 0.5, (12, 16))).astype(np.float32)
    write_feature_dir(root / "features", {"layer-4_mean": features}, paths=[f"/imgs/{n}" for n in names])
    return root


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    return subprocess.run([sys.executable, str(ROOT / "tools" / script), *args], capture_output=True, text=True,
                          env=env, timeout=240, cwd=ROOT)


def _overrides(root: Path) -> list[str]:
    return ["--cfg-options"] + [f"{key}.data_root={root}" for key in
                                ("train_dataloader.dataset", "val_dataloader.dataset", "test_dataloader.dataset",
                                 "model")]


def test_registered_parts_build_and_compute(tmp_path):
    from mmengine.config import Config

    from mmseg.registry import DATASETS, METRICS, MODELS

    root = _demo_like_features(tmp_path)
    cfg = Config.fromfile(str(DEMO_CONFIG))
    dataset = DATASETS.build({**cfg.train_dataloader.dataset, "data_root": str(root)})
    assert len(dataset) == 12 and dataset.metainfo["classes"] == ("china", "flower")
    item = dataset[7]
    assert item["inputs"].shape == (16,) and item["data_samples"]["gt_label"] == 1
    model = MODELS.build({**cfg.model, "data_root": str(root)})
    x = torch.stack([dataset[i]["inputs"] for i in range(12)])
    torch.testing.assert_close(model.mean, x.mean(0))  # standardised with the training statistics
    standardizer = Standardizer(model.mean.numpy(), model.std.numpy())
    torch.testing.assert_close(model.logits(x), model.fc(standardizer.apply(x)), rtol=0, atol=0)  # the one formula
    loss = model(x, [dataset[i]["data_samples"] for i in range(12)], mode="loss")["loss"]
    assert loss.item() == pytest.approx(np.log(2), rel=1e-5)  # zero-initialised head
    metric = METRICS.build(cfg.val_evaluator)
    metric.process(None, [{"pred_score": torch.tensor([0.1, 0.9, 0.0]), "gt_label": 0},
                          {"pred_score": torch.tensor([0.1, 0.9, 0.0]), "gt_label": 1}])
    metric.process(None, [{"pred_score": torch.tensor([0.1, 0.9, 0.0]), "gt_label": 2}])
    assert metric.compute_metrics(metric.results) == pytest.approx({"top1": 100 / 3, "top5": 100.0})
    top3 = METRICS.build({**cfg.val_evaluator, "topk": (1, 2)})
    top3.process(None, [{"pred_score": torch.tensor([0.1, 0.9, 0.0]), "gt_label": 2}])
    assert top3.compute_metrics(top3.results) == {"top1": 0.0, "top2": 0.0}


def test_tools_train_saves_resumes_and_tools_test_evaluates(tmp_path):
    root = _demo_like_features(tmp_path / "demo")
    work = tmp_path / "work"
    first = _run("train.py", str(DEMO_CONFIG), "--work-dir", str(work), *_overrides(root),
                 "train_cfg.max_epochs=2")
    assert first.returncode == 0, first.stderr[-3000:]
    assert (work / "epoch_2.pth").is_file()
    resumed = _run("train.py", str(DEMO_CONFIG), "--work-dir", str(work), "--resume", *_overrides(root),
                   "train_cfg.max_epochs=3")
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    assert "resumed" in output.lower() and "Epoch(train) [1]" not in output and "Epoch(train) [3]" in output
    assert (work / "epoch_3.pth").is_file()
    tested = _run("test.py", str(DEMO_CONFIG), str(work / "epoch_3.pth"), "--work-dir", str(work / "test"),
                  *_overrides(root))
    output = tested.stdout + tested.stderr
    assert tested.returncode == 0, output[-3000:]
    top1 = float(re.findall(r"probe/top1: ([0-9.]+)", output)[-1])
    assert top1 == 100.0  # two well-separated clusters


def test_imagenet_config_composes_from_its_base_files():
    from mmengine.config import Config

    cfg = Config.fromfile(str(ROOT / "configs" / "probes" / "linear_probe_sail7b_imagenet1k.py"))
    assert cfg.model.type == "LinearProbeClassifier" and cfg.model.num_classes == 1000
    assert cfg.train_dataloader.dataset.features == cfg.model.features == "layer-32_mean"
    assert cfg.train_dataloader.dataset.feature_dir == cfg.model.stats_from == "in1k-train"
    assert cfg.val_dataloader.dataset.feature_dir == "in1k-val"
    assert cfg.custom_imports.imports == ["sail_vision.mmseg"]
    assert cfg.param_scheduler[0].type == "CosineAnnealingLR" and cfg.train_cfg.max_epochs == 10


def test_missing_labels_are_a_clear_error(tmp_path):
    from sail_vision.mmseg.classification import ExtractedFeatureDataset
    from sail_vision.probes.errors import ProbeDataError

    write_feature_dir(tmp_path / "f", {"layer-4_mean": np.zeros((3, 2), np.float32)})
    with pytest.raises(ProbeDataError, match="no labels"):
        ExtractedFeatureDataset("f", "layer-4_mean", data_root=str(tmp_path))


def test_val_dataset_is_renumbered_to_the_training_classes_by_name(tmp_path):
    from sail_vision.mmseg.classification import ExtractedFeatureDataset
    from sail_vision.probes.errors import ProbeDataError

    x = np.zeros((3, 2), np.float32)
    write_feature_dir(tmp_path / "train", {"layer-4_mean": x}, labels=[0, 1, 2], classes=["cat", "dog", "zebra"])
    write_feature_dir(tmp_path / "val", {"layer-4_mean": x}, labels=[0, 1, 1], classes=["dog", "zebra"])
    write_feature_dir(tmp_path / "odd", {"layer-4_mean": x}, labels=[0, 1, 1], classes=["dog", "yak"])
    val = ExtractedFeatureDataset("val", "layer-4_mean", data_root=str(tmp_path), classes_from="train")
    assert [val[i]["data_samples"]["gt_label"] for i in range(3)] == [1, 2, 2]
    assert val.metainfo["classes"] == ("cat", "dog", "zebra")
    with pytest.raises(ProbeDataError, match="yak are not train classes"):
        ExtractedFeatureDataset("odd", "layer-4_mean", data_root=str(tmp_path), classes_from="train")
