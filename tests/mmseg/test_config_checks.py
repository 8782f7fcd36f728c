"""config_checks: --cfg-options parsing and typing, data paths under dataset wrappers, SAIL backbones."""

from __future__ import annotations

import pytest
from mmengine.config import Config

from sail_vision.errors import CheckpointError, InputError
from sail_vision.mmseg.config_checks import apply_cfg_options, check_config, parse_cfg_options, sail_backbones


def test_options_are_parsed_as_mmengine_does():
    assert parse_cfg_options(["a=1", "b=0.5", "c=True", "d=None", "e=[1,2]", "f=(8,16)", "g=x=y"]) == {
        "a": 1, "b": 0.5, "c": True, "d": None, "e": [1, 2], "f": (8, 16), "g": "x=y"}
    assert parse_cfg_options(None) == {}
    with pytest.raises(InputError, match="'=3': write KEY=VALUE"):
        parse_cfg_options(["=3"])


def test_values_must_fit_the_entries_they_replace():
    cfg = Config(dict(train_cfg=dict(max_iters=10, by_epoch=False), hooks=[dict(interval=5)], name="x", opt=None))
    apply_cfg_options(cfg, {"train_cfg.max_iters": 20, "hooks.0.interval": 2, "name": 3, "opt": "sgd",
                            "new.key": "added"})
    assert cfg.train_cfg.max_iters == 20 and cfg.hooks[0].interval == 2 and cfg.name == 3 and cfg.new.key == "added"
    with pytest.raises(InputError, match=r"hooks.0.interval='often': expected a number \(the config has 2\)"):
        apply_cfg_options(cfg, {"hooks.0.interval": "often"})
    with pytest.raises(InputError, match="expected True or False"):
        apply_cfg_options(cfg, {"train_cfg.by_epoch": 1})
    with pytest.raises(InputError, match="train_cfg.max_iters.x=1"):
        apply_cfg_options(cfg, {"train_cfg.max_iters.x": 1})


def test_data_paths_are_checked_through_dataset_wrappers(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "list.txt").write_text("")
    good = dict(type="BaseSegDataset", data_root=str(tmp_path), data_prefix=dict(img_path="imgs", seg_map_path=""),
                ann_file="list.txt")
    cfg = Config(dict(train_dataloader=dict(dataset=dict(type="RepeatDataset", times=2, dataset=dict(
        type="ConcatDataset", datasets=[good, {**good, "data_prefix": dict(img_path="missing")}])))))
    with pytest.raises(InputError, match=r"train_dataloader.dataset.dataset.datasets\[1\].data_prefix.img_path "
                                         r"'missing': folder .* not found"):
        check_config(cfg, ["train_dataloader"])
    check_config(cfg, ["val_dataloader"])  # loaders the run does not use are not checked
    cfg.train_dataloader.dataset.dataset.datasets[1] = {**good, "ann_file": "nope.txt"}
    with pytest.raises(InputError, match="ann_file 'nope.txt'"):
        check_config(cfg, ["train_dataloader"])


def test_every_sail_backbone_is_checked_with_where_it_is(tiny_checkpoint, tmp_path):
    backbone = dict(type="SAILBackbone", checkpoint=str(tiny_checkpoint))
    cfg = Config(dict(model=dict(type="EncoderDecoder", backbone=backbone),
                      tta_model=dict(type="SegTTAModel", module=dict(backbone={**backbone, "out_indices": (7,)}))))
    assert [where for where, _ in sail_backbones(cfg)] == ["model.backbone", "tta_model.module.backbone"]
    with pytest.raises(Exception, match=r"^tta_model.module.backbone: .*out of range"):
        check_config(cfg)
    cfg.tta_model.module.backbone.out_indices = (1,)
    cfg.load_from = str(tmp_path / "missing.pth")
    with pytest.raises(CheckpointError, match="missing.pth' not found"):
        check_config(cfg)
