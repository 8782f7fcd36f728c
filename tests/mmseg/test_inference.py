"""`sail-vision segment` and the overlay writer."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sail_vision.cli import main
from sail_vision.errors import InputError
from sail_vision.mmseg.inference import save_overlay


def test_segment_command_writes_an_overlay(trained, seg_data_root, tmp_path, capsys):
    runner, _, _ = trained
    image = sorted((seg_data_root / "images" / "validation").glob("*.jpg"))[1]
    out = tmp_path / "overlay.png"
    code = main(["segment", str(image), "--config", f"{runner.work_dir}/config.py",
                 "--checkpoint", f"{runner.work_dir}/iter_60.pth", "--out", str(out),
                 "--save-labels", str(tmp_path / "labels.png")])
    assert code == 0
    picture = np.asarray(Image.open(out).convert("RGB"))
    assert picture.shape[0] >= 64 and picture.shape[1] > picture.shape[0]  # image plus legend column
    labels = np.asarray(Image.open(tmp_path / "labels.png"))
    assert labels.shape == (64, 64) and set(np.unique(labels)) <= {0, 1, 2, 3}


def test_segment_command_reports_missing_checkpoint(trained, seg_data_root, tmp_path, capsys):
    runner, _, _ = trained
    image = sorted((seg_data_root / "images" / "validation").glob("*.jpg"))[0]
    code = main(["segment", str(image), "--config", f"{runner.work_dir}/config.py",
                 "--checkpoint", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "o.png")])
    assert code == 2
    assert "missing.pth" in capsys.readouterr().err


def test_segment_command_takes_cfg_options(trained, seg_data_root, tmp_path, capsys):
    """A config whose SAIL checkpoint path is wrong works once --cfg-options points it to the right folder."""
    from mmengine.config import Config

    runner, _, _ = trained
    cfg = Config.fromfile(f"{runner.work_dir}/config.py")
    real = cfg.model.backbone.checkpoint
    cfg.model.backbone.checkpoint = str(tmp_path / "not-here")
    cfg.dump(str(tmp_path / "config.py"))
    image = sorted((seg_data_root / "images" / "validation").glob("*.jpg"))[0]
    args = ["segment", str(image), "--config", str(tmp_path / "config.py"), "--checkpoint",
            f"{runner.work_dir}/iter_60.pth", "--out", str(tmp_path / "o.png")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not-here" in err and "is not a folder" in err
    assert main(args + ["--cfg-options", f"model.backbone.checkpoint={real}"]) == 0
    assert (tmp_path / "o.png").is_file()
    assert main(args + ["--cfg-options", "model.backbone.checkpoint"]) == 2
    assert "write KEY=VALUE" in capsys.readouterr().err


def test_overlay_rejects_mismatched_prediction(tmp_path):
    image = np.zeros((10, 12, 3), dtype=np.uint8)
    with pytest.raises(InputError, match="does not match"):
        save_overlay(image, np.zeros((5, 5), dtype=np.int64), ["a"], [[255, 0, 0]], tmp_path / "x.png")
