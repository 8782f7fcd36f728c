"""The linear depth head (plain torch and mmseg's SAILLinearDepthHead) and SAIL depth through mmseg's tools."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sail_vision.probes.depth_head import LinearDepthHead, depth_bins, logits_to_depth

ROOT = Path(__file__).resolve().parents[2]
DEPTH_DEMO = "linear_sail-tiny_1xb4-300_synthetic-depth-64x64"


def test_expected_depth_by_hand_for_each_normalisation():
    logits = torch.tensor([1.0, -1.0, 2.0]).view(1, 3, 1, 1)
    centres = np.array([1.0, 2.0, 3.0])
    linear = np.array([1.1, 0.1, 2.1]) / 3.3                      # ReLU, + 0.1, divided by the sum
    softmax = np.exp([1.0, -1.0, 2.0]) / np.exp([1.0, -1.0, 2.0]).sum()
    sig = 1 / (1 + np.exp(-np.array([1.0, -1.0, 2.0])))
    for normalisation, weights in (("linear", linear), ("softmax", softmax), ("sigmoid", sig / sig.sum())):
        depth = logits_to_depth(logits, min_depth=1.0, max_depth=3.0, normalisation=normalisation)
        assert depth.shape == (1, 1, 1, 1)
        assert depth.item() == pytest.approx(float(weights @ centres), rel=1e-6), normalisation
    regression = logits_to_depth(torch.tensor([-2.0, 0.5]).view(2, 1, 1, 1), min_depth=0.25, max_depth=3.0)
    assert regression.flatten().tolist() == pytest.approx([0.25, 0.75])


def test_log_bins_are_geometric_between_the_range_ends():
    bins = depth_bins(5, 0.5, 8.0, "log").double()
    assert bins[0].item() == pytest.approx(0.5, rel=1e-6) and bins[-1].item() == pytest.approx(8.0, rel=1e-6)
    ratios = (bins[1:] / bins[:-1]).numpy()
    assert np.allclose(ratios, 2.0, rtol=1e-5)
    assert torch.equal(depth_bins(3, 1.0, 3.0), torch.tensor([1.0, 2.0, 3.0]))


def test_maps_are_resized_to_the_first_and_class_tokens_broadcast():
    torch.manual_seed(0)
    head = LinearDepthHead([4, 6], n_bins=8, use_class_token=True).eval()
    a, b = torch.randn(2, 4, 3, 5), torch.randn(2, 6, 6, 10)
    ta, tb = torch.randn(2, 4), torch.randn(2, 6)
    features = head.features([(a, ta), (b, tb)])
    assert features.shape == (2, 20, 3, 5) and head.channels == 20
    assert torch.equal(features[:, :4], a)
    assert torch.equal(features[:, 4:8], ta[:, :, None, None].expand(2, 4, 3, 5))
    resized = torch.nn.functional.interpolate(b, size=(3, 5), mode="bilinear", align_corners=False)
    assert torch.allclose(features[:, 8:14], resized, atol=1e-6)
    depth = head.predict_depth([(a, ta), (b, tb)])
    assert depth.shape == (2, 1, 3, 5) and bool(((depth >= 0.001) & (depth <= 10.0)).all())


@pytest.mark.parametrize("kwargs, message", [
    (dict(min_depth=2.0, max_depth=1.0), "0 < min_depth < max_depth"),
    (dict(min_depth=0.0), "0 < min_depth < max_depth"),
    (dict(bin_spacing="uniform"), "bin_spacing 'uniform'"),
    (dict(normalisation="relu"), "normalisation 'relu'"),
    (dict(n_bins=0), "n_bins must be at least 1"),
])
def test_bad_head_settings_are_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LinearDepthHead([8], **kwargs)


def test_a_class_token_head_refuses_bare_maps():
    head = LinearDepthHead([4], n_bins=2, use_class_token=True)
    with pytest.raises(ValueError, match=r"\(map, token\) pair"):
        head([torch.zeros(1, 4, 2, 2)])
    with pytest.raises(ValueError, match="takes 1 input map"):
        head([(torch.zeros(1, 4, 2, 2), torch.zeros(1, 4))] * 2)


def _silog_by_hand(pred: np.ndarray, target: np.ndarray) -> float:
    """mmseg's SiLogLoss for one image: sqrt(mean d^2 - 0.5 mean(d)^2), d = log gt - log pred, gt > 0 only."""
    valid = target > 1e-6
    d = np.log(target[valid]) - np.log(pred[valid])
    return math.sqrt((d ** 2).mean() - 0.5 * d.mean() ** 2)


def test_the_mmseg_head_runs_the_same_module_and_ignores_holes():
    pytest.importorskip("mmseg")
    from mmengine.structures import PixelData
    from mmseg.registry import MODELS
    from mmseg.structures import SegDataSample

    import sail_vision.mmseg  # noqa: F401  (registers the head)

    torch.manual_seed(0)
    head = MODELS.build(dict(type="SAILLinearDepthHead", in_channels=[8, 8], in_index=[1, 0], n_bins=16,
                             min_depth=0.5, max_depth=6.0))
    assert sorted(head.state_dict()) == ["head.bn.bias", "head.bn.num_batches_tracked", "head.bn.running_mean",
                                         "head.bn.running_var", "head.bn.weight", "head.conv.bias",
                                         "head.conv.weight"]
    plain = LinearDepthHead([8, 8], n_bins=16, min_depth=0.5, max_depth=6.0)
    for p in plain.parameters():
        torch.nn.init.normal_(p)
    head.head.load_state_dict(plain.state_dict(), strict=True)
    head.eval(), plain.eval()
    maps = (torch.randn(2, 8, 4, 4), torch.randn(2, 8, 4, 4))
    assert torch.equal(head(maps), plain.predict_depth([maps[1], maps[0]]))

    target = torch.rand(2, 1, 8, 8) * 5 + 0.5
    target[0, 0, :2, :3] = 0.0  # holes: "no measurement"
    samples = []
    for t in target:
        sample = SegDataSample()
        sample.gt_depth_map = PixelData(data=t)
        samples.append(sample)
    losses = head.loss_by_feat(head(maps), samples)
    pred = torch.nn.functional.interpolate(head(maps), size=(8, 8), mode="bilinear", align_corners=False)
    by_hand = np.mean([_silog_by_hand(pred[i, 0].detach().numpy().astype(np.float64),
                                      target[i, 0].numpy().astype(np.float64)) for i in range(2)])
    assert losses["loss_silog"].item() == pytest.approx(by_hand, rel=1e-4)


def _run_tool(script: str, *args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def _constant_predictor_rmse(root: Path) -> float:
    """DepthMetric's rmse (mean over images) of predicting the training set's mean valid depth everywhere."""
    train = [np.asarray(Image.open(p), dtype=np.float64) / 1000.0
             for p in sorted((root / "annotations" / "train").glob("*.png"))]
    constant = np.concatenate([t[t > 0] for t in train]).mean()
    rmses = []
    for path in sorted((root / "annotations" / "test").glob("*.png")):
        gt = np.asarray(Image.open(path), dtype=np.float64) / 1000.0
        valid = (gt > 0.001) & (gt < 10.0)
        rmses.append(math.sqrt(((gt[valid] - constant) ** 2).mean()))
    return float(np.mean(rmses))


def test_depth_demo_trains_with_tools_train_and_tools_test_reproduces_its_metrics(tmp_path):
    """The two demo commands (docs/depth.md), shortened: the trained head beats the constant predictor by
    far, and tools/test.py with its checkpoint gives the same validation metrics."""
    pytest.importorskip("mmseg")
    subprocess.run([sys.executable, "-m", "sail_vision.mmseg.synthetic", "--task", "depth"], cwd=tmp_path,
                   check=True, capture_output=True, timeout=120)
    root = tmp_path / "data" / "sail_depth_demo"
    depth_png = next((root / "annotations" / "train").glob("*.png"))
    stored = np.asarray(Image.open(depth_png))
    assert stored.dtype == np.uint16 and (stored == 0).any() and stored.max() > 1000  # millimetres with holes

    config = ROOT / "configs" / "sail" / f"{DEPTH_DEMO}.py"
    iters = 80
    result = _run_tool("train.py", config, "--work-dir", tmp_path / "train", "--cfg-options",
                       f"train_cfg.max_iters={iters}", f"train_cfg.val_interval={iters}",
                       f"default_hooks.checkpoint.interval={iters}",
                       f"param_scheduler.0.end={iters}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    scalars = next((tmp_path / "train").glob("*/vis_data/scalars.json")).read_text().splitlines()
    trained = [json.loads(line) for line in scalars if "rmse" in line][-1]

    result = _run_tool("test.py", config, tmp_path / "train" / f"iter_{iters}.pth", "--work-dir",
                       tmp_path / "test", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    tested = json.loads(next((tmp_path / "test").glob("*/*.json")).read_text().splitlines()[-1])
    for key in ("d1", "abs_rel", "rmse", "silog"):
        assert tested[key] == pytest.approx(trained[key], abs=1e-4), key

    baseline = _constant_predictor_rmse(root)
    assert baseline > 1.0
    assert tested["rmse"] < 0.6 * baseline, (tested["rmse"], baseline)
