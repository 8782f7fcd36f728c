"""The chosen segmentation head as an mmseg checkpoint (SAILLinearHead / EncoderDecoder), and the CLI task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sail_vision.probes import FeatureInput
from sail_vision.probes.seg_data import SegmentationData
from sail_vision.probes.seg_export import export_mmseg_checkpoint
from sail_vision.probes.seg_heads import SegmentationConfig
from sail_vision.probes.segmentation import run_segmentation_probe

from .test_segmentation import QUICK, make_store

CONFIG = Path(__file__).resolve().parents[2] / "configs/sail/linear_sail-tiny_1xb4-300_synthetic-64x64.py"


@pytest.fixture(scope="module")
def probe_heads(tmp_path_factory):
    """Chosen heads of a one-layer input (width 256, the tiny config's) and of a two-layer concatenation."""
    root = tmp_path_factory.mktemp("seg_export")
    train, val = make_store(num_images=12, dims=(256, 8), seed=0), make_store(num_images=4, dims=(256, 8), seed=1)
    heads = {}
    for key, parts in (("one", ("layer-1_patch",)), ("two", ("layer-1_patch", "layer-2_patch"))):
        result = run_segmentation_probe(SegmentationData(train, "train"), SegmentationData(val, "val"),
                                        [FeatureInput(parts)], root / key,
                                        SegmentationConfig(**{**QUICK, "epochs": 1}), progress=False, verbose=False)
        heads[key] = (result, root / key / "mmseg_head.pth", val)
    return heads


def _sail_head(in_channels, num_classes):
    from mmengine.config import Config

    from sail_vision.mmseg import SAILLinearHead

    cfg = Config.fromfile(str(CONFIG)).model.decode_head.to_dict()
    cfg.pop("type")
    cfg.update(in_channels=in_channels, in_index=list(range(len(in_channels))), num_classes=num_classes,
               norm_cfg=dict(type="BN", requires_grad=True))
    return SAILLinearHead(**cfg).eval()


@pytest.mark.parametrize("key", ["one", "two"])
def test_exported_checkpoint_gives_the_probe_heads_logits_in_sail_linear_head(probe_heads, key):
    result, path, val = probe_heads[key]
    head = result.head
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)  # safe loader
    assert set(checkpoint["state_dict"]) == {f"decode_head.{k}" for k in (
        "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var", "bn.num_batches_tracked",
        "conv_seg.weight", "conv_seg.bias")}
    assert checkpoint["meta"]["dataset_meta"]["classes"] == ["sky", "tree", "road"]
    assert checkpoint["meta"]["sail_vision"]["config"]["model.decode_head.in_channels"] == head.part_dims
    module = _sail_head(head.part_dims, head.num_classes)
    module.load_state_dict({k[len("decode_head."):]: v for k, v in checkpoint["state_dict"].items()}, strict=True)
    for index in range(val.num_valid):
        parts = [val.features[p][index].astype(np.float32) for p in head.feature_input.parts]
        maps = [torch.from_numpy(m).permute(2, 0, 1)[None] for m in parts]  # backbone layout (1, D, h, w)
        with torch.no_grad():
            theirs = module(maps)
            ours = head.logits(np.concatenate(parts, -1))
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)


def test_exported_checkpoint_fits_the_tiny_configs_encoder_decoder(probe_heads, tiny_checkpoint, tmp_path):
    """What tools/test.py checks before testing (strict): the file holds exactly the model's weights."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from sail_vision.mmseg.checkpoints import check_state_dict_matches, load_from_local_weights_only

    result, path, _ = probe_heads["one"]
    cfg = Config.fromfile(str(CONFIG))
    cfg.model.backbone.checkpoint = str(tiny_checkpoint)
    cfg.model.decode_head.num_classes = result.head.num_classes
    init_default_scope("mmseg")
    model = MODELS.build(cfg.model)
    checkpoint = load_from_local_weights_only(str(path))
    check_state_dict_matches(model, checkpoint["state_dict"], path)
    model.load_state_dict(checkpoint["state_dict"], strict=True)


def test_export_without_standardiser_is_identity_bn(tmp_path):
    from sail_vision.probes.seg_heads import SegmentationHead

    head = SegmentationHead(FeatureInput(("a",)), np.eye(3, 4, dtype=np.float32), np.zeros(3, np.float32), None, [4])
    path = export_mmseg_checkpoint(head, tmp_path / "h.pth")
    module = _sail_head([4], 3)
    state = torch.load(path, weights_only=True)["state_dict"]
    module.load_state_dict({k[len("decode_head."):]: v for k, v in state.items()})
    x = torch.randn(1, 4, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(module([x]), head.logits(x.permute(0, 2, 3, 1)), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------- CLI
def test_cli_segmentation_task(monkeypatch, tmp_path, capsys):
    from sail_vision.cli import main

    stores = {"TRAIN": make_store(num_images=10, seed=0), "VAL": make_store(num_images=4, seed=1)}
    monkeypatch.setattr(SegmentationData, "from_folder",
                        classmethod(lambda cls, path: cls(stores[str(path)], str(path))))
    code = main(["probe", "--task", "segmentation", "--train", "TRAIN", "--val", "VAL", "--features",
                 "layer-1_patch+layer-2_patch", "--lrs", "0.1,1", "--wds", "0", "--epochs", "2", "--quiet",
                 "--device", "cpu", "--out", str(tmp_path / "out")])
    assert code == 0
    line = capsys.readouterr().out
    assert "model.backbone.checkpoint=CHECKPOINT" in line and "records no checkpoint path" in line
    assert "segmentation probe on layer-1_patch+layer-2_patch: val mIoU" in line and "mmseg_head.pth" in line
    assert (tmp_path / "out" / "mmseg_head.pth").is_file()
    stores["TRAIN"].manifest["checkpoint"]["path"] = "/ckpts/my sail/model.safetensors"
    assert main(["probe", "--task", "segmentation", "--train", "TRAIN", "--val", "VAL", "--features", "layer-1_patch",
                 "--lrs", "0.1", "--wds", "0", "--epochs", "1", "--quiet", "--device", "cpu", "--out",
                 str(tmp_path / "out2")]) == 0
    printed = capsys.readouterr().out
    assert "'model.backbone.checkpoint=/ckpts/my sail/model.safetensors'" in printed and "CHECKPOINT" not in printed
    assert json.loads((tmp_path / "out2" / "summary.json").read_text())["checkpoint"] == \
        "/ckpts/my sail/model.safetensors"


def test_cli_segmentation_errors(tmp_path, capsys, digits_split):
    from sail_vision.cli import main

    from .conftest import write_digits_dirs

    train, val = write_digits_dirs(tmp_path, digits_split)
    code = main(["probe", "--task", "segmentation", "--train", str(train), "--val", str(val), "--features",
                 "layer-4_mean", "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "has no segmentation masks" in err and len(err.splitlines()) == 1
    code = main(["probe", "--task", "segmentation", "--train", str(train), "--val", str(val), "--method", "knn",
                 "--features", "x", "--out", str(tmp_path / "out")])
    assert code == 2 and "linear heads only" in capsys.readouterr().err
