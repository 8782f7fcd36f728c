"""The configs in configs/ parse, compose their _base_ files and follow mmseg's conventions."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

CONFIGS_ROOT = Path(__file__).resolve().parents[2] / "configs"
CONFIGS = sorted((CONFIGS_ROOT / "sail").glob("*.py"))
# mmseg's naming: {head}_{neck?}_{backbone}_{gpus}xb{batch}-{iters}_{dataset}-{crop}.py
NAME = re.compile(r"^(?P<head>[a-z0-9-]+)_(?:(?P<neck>mln)_)?(?P<backbone>sail-[a-z0-9]+)_(?P<gpus>\d+)xb(?P<batch>\d+)"
                  r"-(?P<iters>\d+k?)_(?P<dataset>[a-z0-9-]+?)-(?P<crop>\d+x\d+)$")


def test_every_expected_config_exists():
    names = {p.stem for p in CONFIGS}
    assert names == {"linear_sail-7b_8xb2-40k_ade20k-512x512", "linear4-ms_sail-7b_8xb2-40k_ade20k-512x512",
                     "upernet_mln_sail-7b_8xb2-40k_ade20k-512x512", "linear_sail-tiny_1xb4-300_synthetic-64x64",
                     "linear4-ms_sail-tiny_1xb4-300_synthetic-64x64", "upernet_mln_sail-tiny_1xb4-300_synthetic-64x64",
                     "linear_sail-7b_8xb2-38400_nyu-416x544", "linear_sail-tiny_1xb4-300_synthetic-depth-64x64"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_config_composes_and_its_name_says_what_it_is(path):
    from mmengine.config import Config

    cfg = Config.fromfile(str(path))
    name = NAME.match(path.stem)
    assert name, f"{path.stem} does not follow {{head}}_{{neck?}}_{{backbone}}_{{gpus}}xb{{batch}}-{{iters}}_..."
    assert cfg.model.backbone.type == "SAILBackbone"
    assert "sail_vision.mmseg" in cfg.custom_imports.imports
    assert {"type": "WeightsOnlyCheckpointHook"} in cfg.custom_hooks
    assert cfg.train_dataloader.batch_size == int(name["batch"])
    assert str(cfg.train_cfg.max_iters) == name["iters"].replace("k", "000")
    assert "x".join(map(str, cfg.crop_size)) == name["crop"]
    if cfg.model.type == "DepthEstimator":
        _check_depth_config(cfg, name)
        return
    assert "test_pipeline" in cfg and "tta_pipeline" in cfg and "tta_model" in cfg  # inference_model / --tta
    assert cfg.model.decode_head.num_classes == cfg.num_classes  # set from the dataset file
    assert (name["neck"] == "mln") == (cfg.model.get("neck", {}).get("type") == "MultiLevelNeck")
    if name["backbone"] == "sail-7b":
        assert cfg.model.backbone.dtype == "auto" and cfg.model.backbone.frozen
        assert cfg.model.test_cfg.mode == "slide" and name["dataset"] == "ade20k" and cfg.num_classes == 150
        assert all(v % 32 == 0 for v in (*cfg.model.test_cfg.crop_size, *cfg.model.test_cfg.stride))
    else:
        assert cfg.train_dataloader.dataset.type == "SyntheticColourDataset" and cfg.num_classes == 4
    if name["head"] == "upernet":
        assert cfg.model.decode_head.type == "UPerHead"
        assert len(cfg.model.neck.in_channels) == len(cfg.model.backbone.out_indices)
    else:
        head = cfg.model.decode_head
        assert head.type == "SAILLinearHead" and len(head.in_channels) == len(head.in_index)
        assert len(head.in_index) == (4 if name["head"] == "linear4-ms" else 1)


def _check_depth_config(cfg, name) -> None:
    head = cfg.model.decode_head
    assert head.type == "SAILLinearDepthHead" and len(head.in_channels) == len(head.in_index) == 1
    assert cfg.model.data_preprocessor.seg_pad_val == 0  # padded depth reads "no measurement", never 255 m
    assert cfg.test_evaluator.type == "DepthMetric" and "test_pipeline" in cfg
    assert cfg.train_dataloader.dataset.type == "NYUDataset"
    if name["backbone"] == "sail-7b":
        assert name["dataset"] == "nyu" and cfg.model.backbone.dtype == "auto" and cfg.model.backbone.frozen
        assert cfg.test_evaluator.crop_type == "nyu_crop" and cfg.model.data_preprocessor.get("size") is None
        assert (head.min_depth, head.max_depth, head.n_bins) == (0.001, 10.0, 256)
        assert all(v % 32 == 0 for v in cfg.crop_size)


@pytest.mark.parametrize("path", sorted((CONFIGS_ROOT / "_base_" / "models").glob("*.py")), ids=lambda p: p.stem)
def test_model_base_files_know_nothing_of_the_dataset(path):
    from mmengine.config import Config

    cfg = Config.fromfile(str(path))
    assert "num_classes" not in cfg.model.decode_head and "num_classes" not in cfg


def test_demo_dataset_has_its_own_four_classes(seg_data_root):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS

    init_default_scope("mmseg")
    cfg = Config.fromfile(str(CONFIGS_ROOT / "sail" / "linear_sail-tiny_1xb4-300_synthetic-64x64.py"))
    dataset = DATASETS.build({**cfg.val_dataloader.dataset, "data_root": str(seg_data_root)})
    assert dataset.metainfo["classes"] == ("red", "green", "blue", "yellow") == type(dataset).METAINFO["classes"]
    assert len(dataset) == 8 and dataset.reduce_zero_label
    labels = dataset[0]["data_samples"].gt_sem_seg.data.unique().tolist()
    assert set(labels) <= {0, 1, 2, 3}  # labels 1..4 on disk, reduced to classes 0..3


def test_probe_configs_save_weights_only_checkpoints():
    from mmengine.config import Config

    for path in sorted((CONFIGS_ROOT / "probes").glob("*.py")):
        assert {"type": "WeightsOnlyCheckpointHook"} in Config.fromfile(str(path)).custom_hooks, path
