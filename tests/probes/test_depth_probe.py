"""The depth probe's core on cached features: the grid of linear depth heads trained in one pass on a
synthetic set whose depth follows the image, its heads equal to the one depth head class
(``LinearDepthHead``) run as mmseg runs it, and its loss mmseg's SiLogLoss."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sail_vision.cli import main as cli
from sail_vision.extraction import extract
from sail_vision.mmseg.synthetic import make_synthetic_depth_dataset
from sail_vision.probes import FeatureInput
from sail_vision.probes.depth_metrics import average_depth_metrics, image_depth_metrics
from sail_vision.probes.depth_train import (DepthConfig, DepthData, DepthHeadStack, depth_head_module,
                                            depth_stack_factory, evaluate_depth_stacks)
from sail_vision.probes.errors import ProbeDataError
from sail_vision.probes.seg_data import batches, size_batches
from sail_vision.probes.seg_heads import SegmentationHead
from sail_vision.probes.seg_train import train_seg_grid

FEATURE = FeatureInput(("layer-4_patch",))
CONFIG = dict(epochs=15, batch_size=4, lrs=(3e-3, 3e-2), weight_decays=(1e-4,))


@pytest.fixture(scope="module")
def depth_folders(tiny_checkpoint, tmp_path_factory):
    """Synthetic NYU-layout depth (24 train, 8 test images of 64x64) extracted with the tiny checkpoint."""
    root = tmp_path_factory.mktemp("depth")
    make_synthetic_depth_dataset(root / "nyu", num_train=24, num_val=8)
    folders = {}
    for split in ("train", "test"):
        folders[split] = root / split
        extract(tiny_checkpoint, root / "nyu", folders[split], layout="nyu", split=split, layers=[-1],
                pools=["patch"], workers=0, progress=False, dtype="float32", save_dtype="float32", device="cpu")
    folders["data"] = root / "nyu"
    return folders


def _constant_rmse(train: DepthData, val: DepthData) -> float:
    measured = np.concatenate([train.mask(i)[train.mask(i) > 0] for i in range(train.num_images)])
    mean = float(measured.mean())
    return average_depth_metrics(image_depth_metrics(torch.from_numpy(val.mask(i).copy()),
                                                     torch.full(val.mask(i).shape, mean))
                                 for i in range(val.num_images))["rmse"]


def test_depth_grid_beats_the_constant_predictor_by_far(depth_folders):
    train, val = DepthData.from_folder(depth_folders["train"]), DepthData.from_folder(depth_folders["test"])
    config = DepthConfig(**CONFIG)
    grid = train_seg_grid(train, [FEATURE], np.arange(train.num_images), config,
                          make_stack=depth_stack_factory(config), what="depth", progress=False)
    found = evaluate_depth_stacks(grid.stacks, [FEATURE], val, np.arange(val.num_images), config, keep=2)
    best = min(m["rmse"] for m in found.metrics[FEATURE.name])
    constant = _constant_rmse(train, val)
    assert best < 0.6 * constant, (best, constant)
    assert len(found.shown) == 2 and found.shown[0][1].shape == found.shown[0][2].shape == (64, 64)


@pytest.mark.parametrize("n_bins, normalisation", [(256, "linear"), (16, "softmax"), (1, "linear")])
def test_stack_heads_are_linear_depth_heads_and_losses_are_silog(depth_folders, n_bins, normalisation):
    from mmseg.models.losses import SiLogLoss

    train = DepthData.from_folder(depth_folders["train"])
    config = DepthConfig(**{**CONFIG, "epochs": 1, "n_bins": n_bins, "normalisation": normalisation,
                            "bin_spacing": "log"})
    rows = np.arange(train.num_images)
    grid = train_seg_grid(train, [FEATURE], rows, config, make_stack=depth_stack_factory(config), progress=False)
    stack = grid.stacks[FEATURE.name]
    batch = next(batches(train, size_batches(rows[:4], train.grids(), 4, None), FEATURE.parts, "cpu"))
    x = stack.prepare(FEATURE.concat(batch.features))
    size = tuple(batch.masks.shape[1:])
    predicted = stack.predictions(x, batch.shape, size, config.max_logits)
    maps = torch.stack([torch.from_numpy(train.maps("layer-4_patch", int(r)).astype(np.float32)) for r in batch.rows])
    for index in range(stack.heads):
        head = SegmentationHead.from_tensors(FEATURE, stack.head(index), train.dims(FEATURE.parts))
        module = depth_head_module(head, config)
        with torch.no_grad():
            depth = F.interpolate(module.predict_depth([maps.permute(0, 3, 1, 2)]), size=size, mode="bilinear",
                                  align_corners=False)
        torch.testing.assert_close(predicted[index], depth[:, 0], rtol=1e-4, atol=1e-4)
        expected = SiLogLoss()(depth, batch.masks.float().unsqueeze(1))
        one = DepthHeadStack.from_head(head, config)
        loss = one.seg_step(one.prepare(FEATURE.concat(batch.features)), batch.shape, batch.masks, 1.0,
                            config.max_logits)
        torch.testing.assert_close(loss[0], expected, rtol=1e-4, atol=1e-5)


def test_depth_and_segmentation_folders_are_not_mixed_up(depth_folders, tmp_path):
    from sail_vision.feature_store import write_feature_dir

    write_feature_dir(tmp_path / "seg", {"layer-4_patch": np.zeros((1, 2, 2, 4), np.float32)},
                      masks=np.zeros((1, 16, 16), np.uint8), mask_meta={"num_classes": 2},
                      checkpoint={"config": {"vision_patch_size": 8}})
    with pytest.raises(ProbeDataError, match="holds segmentation masks, not depth maps"):
        DepthData.from_folder(tmp_path / "seg")
    with pytest.raises(ProbeDataError, match="--bn batch"):
        DepthConfig(bn="batch").check()
    with pytest.raises(ProbeDataError, match="min_depth"):
        DepthConfig(min_depth=2.0, max_depth=1.0).check()


def test_an_image_without_measured_depth_adds_no_nan():
    config = DepthConfig(n_bins=8, lrs=(1e-2,), weight_decays=(0.0,))
    stack = DepthHeadStack(4, 8, [1e-2], [0.0], None, config)
    x = torch.randn(2 * 2 * 2, 4)
    depths = torch.rand(2, 16, 16) * 5 + 0.5
    depths[1] = 0.0  # no measurement at all
    loss = stack.seg_step(x, (2, 2, 2), depths, 1.0, config.max_logits)
    assert torch.isfinite(loss).all() and torch.isfinite(stack.weight).all()
    assert stack.seg_step(x, (2, 2, 2), torch.zeros(2, 16, 16), 1.0, config.max_logits) is None


ROOT = Path(__file__).resolve().parents[2]
DEPTH_CONFIG = ROOT / "configs" / "sail" / "linear_sail-tiny_1xb4-300_synthetic-depth-64x64.py"


def _tools_test(tiny_checkpoint, data, checkpoint, work_dir) -> dict:
    from sail_vision.probes.seg_export import mmseg_cfg_options

    spec = importlib.util.spec_from_file_location("sail_tools_test_depth", ROOT / "tools" / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    meta = torch.load(checkpoint, map_location="cpu", weights_only=True)["meta"]["sail_vision"]
    module.main([str(DEPTH_CONFIG), str(checkpoint), "--work-dir", str(work_dir), "--cfg-options",
                 *mmseg_cfg_options(meta["config"]), f"model.backbone.checkpoint={tiny_checkpoint}",
                 f"test_dataloader.dataset.data_root={data}", "experiment_name=depth_e2e",
                 "visualizer.name=depth_e2e_vis"])
    logs = sorted(Path(work_dir).glob("*/*.json"))
    assert logs, "tools/test.py wrote no metrics"
    return json.loads(logs[-1].read_text().splitlines()[-1])


def test_probe_task_depth_end_to_end_and_tools_test_reproduces_it(depth_folders, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "probe"
    code = cli(["probe", "--task", "depth", "--train", str(depth_folders["train"]), "--val",
                str(depth_folders["test"]), "--features", "layer-4_patch", "--lrs", "0.003,0.03", "--wds", "0.0001",
                "--epochs", "15", "--batch-size", "4", "--device", "cpu", "--quiet", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "depth probe on layer-4_patch: val rmse" in printed and "tools/test.py CONFIG" in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "depth-linear" and summary["task"] == "depth"
    assert set(summary) >= {"rmse", "abs_rel", "d1", "d2", "d3", "sq_rel", "rmse_log", "log10", "silog"}
    assert summary["evaluation"]["nyu_crop_applied"] is False and summary["evaluation"]["min_depth_eval"] == 0.001
    train, val = DepthData.from_folder(depth_folders["train"]), DepthData.from_folder(depth_folders["test"])
    assert summary["rmse"] < 0.6 * _constant_rmse(train, val)
    assert (out / "predictions.png").stat().st_size > 0 and summary["files"]["predictions_plot"] == "predictions.png"
    state = torch.load(out / "mmseg_head.pth", map_location="cpu", weights_only=True)["state_dict"]
    assert sorted(state) == ["decode_head.head.bn.bias", "decode_head.head.bn.num_batches_tracked",
                             "decode_head.head.bn.running_mean", "decode_head.head.bn.running_var",
                             "decode_head.head.bn.weight", "decode_head.head.conv.bias", "decode_head.head.conv.weight"]
    from mmengine.config import Config

    import sail_vision.mmseg  # noqa: F401  (registers SAILLinearDepthHead)
    from mmseg.registry import MODELS

    head_cfg = Config.fromfile(str(DEPTH_CONFIG)).model.decode_head
    head = MODELS.build({**head_cfg, "in_channels": [256]})
    head.load_state_dict({k[len("decode_head."):]: v for k, v in state.items()}, strict=True)
    from sail_vision.probes.report import build_report

    assert f"| depth | depth-linear | layer-4_patch | 4 | - | rmse {summary['rmse']:.4f} m" in build_report([out])
    found = _tools_test(tiny_checkpoint, depth_folders["data"], out / "mmseg_head.pth", tmp_path / "test")
    print({m: (found[m], summary[m]) for m in ("rmse", "abs_rel", "d1", "silog")})
    for metric in ("rmse", "abs_rel", "d1", "silog"):
        assert abs(found[metric] - summary[metric]) <= 1e-4 * max(1.0, abs(summary[metric])), \
            (metric, found[metric], summary[metric])


def test_selection_prefers_the_lowest_errors():
    from sail_vision.probes.methods import best_record
    from sail_vision.probes.results import best_layer, layer_summary

    metrics = ("rmse", "abs_rel", "d1")
    records = [{"name": f"p{i}", "parts": [f"layer-{k}_patch"], "holdout_rmse": rmse, "holdout_abs_rel": rel,
                "holdout_d1": d1} for i, (k, rmse, rel, d1) in enumerate([(1, 0.9, 0.2, 0.8), (2, 0.5, 0.3, 0.6),
                                                                         (2, 0.5, 0.1, 0.5), (3, None, None, None)])]
    assert best_record(records, metrics)["name"] == "p2"  # lowest rmse, then lowest abs_rel
    assert best_layer(layer_summary(records, metrics), metrics)["feature"] == "layer-2_patch"


def test_a_range_that_scores_nothing_is_a_one_line_error(depth_folders, tmp_path, capsys):
    code = cli(["probe", "--task", "depth", "--train", str(depth_folders["train"]), "--val",
                str(depth_folders["test"]), "--features", "layer-4_patch", "--epochs", "1", "--lrs", "0.01,0.1",
                "--eval-depth-range", "20,30", "--device", "cpu", "--quiet", "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    assert code == 2 and "no held-out image has ground truth within --eval-depth-range 20,30" in err
    assert err.count("\n") == 1


def test_concatenated_layers_export_as_the_multi_input_head(tmp_path):
    """'lin. 4'-style inputs (several layers' patch maps concatenated): the exported LinearDepthHead takes the
    layers as separate maps (in_channels per layer, as mmseg's in_index gives them) and predicts the same."""
    from sail_vision.feature_store import write_feature_dir

    rng = np.random.default_rng(0)
    maps = {f"layer-{k}_patch": rng.normal(size=(6, 2, 3, 4 + k)).astype(np.float32) for k in (1, 2)}
    depths = rng.uniform(0.5, 5.0, size=(6, 16, 24)).astype(np.float32)
    write_feature_dir(tmp_path / "d", maps, masks=depths, mask_meta={"depth_scale": 1000},
                      checkpoint={"config": {"vision_patch_size": 8}})
    data = DepthData.from_folder(tmp_path / "d")
    both = FeatureInput(("layer-1_patch", "layer-2_patch"))
    config = DepthConfig(n_bins=16, lrs=(0.01,), weight_decays=(0.0,), epochs=2, batch_size=3)
    grid = train_seg_grid(data, [both], np.arange(6), config, make_stack=depth_stack_factory(config), progress=False)
    head = SegmentationHead.from_tensors(both, grid.stacks[both.name].head(0), data.dims(both.parts))
    module = depth_head_module(head, config)
    assert module.in_channels == [5, 6]
    stack = DepthHeadStack.from_head(head, config)
    batch = next(batches(data, [np.arange(3)], both.parts, "cpu"))
    expected = stack.predictions(stack.prepare(both.concat(batch.features)), batch.shape, (16, 24), config.max_logits)
    with torch.no_grad():
        depth = module.predict_depth([torch.from_numpy(maps[p][:3]).permute(0, 3, 1, 2) for p in both.parts])
    torch.testing.assert_close(F.interpolate(depth, size=(16, 24), mode="bilinear", align_corners=False)[:, 0],
                               expected[0], rtol=1e-4, atol=1e-4)
