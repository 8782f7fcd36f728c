"""tools/train.py, tools/test.py --tta and the demo command, as users run them."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"sail_tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _short(cfg, iters: int):
    cfg.merge_from_dict(dict(train_cfg=dict(max_iters=iters, val_interval=10 * iters, val_begin=10 * iters),
                             default_hooks=dict(checkpoint=dict(interval=iters))))
    return cfg


def test_train_then_test_with_tta(tiny_cfg, tmp_path, logged_losses):
    cfg = _short(tiny_cfg("sail-tiny_linear4-ms_1xb4-300_synthetic-64x64"), 2)
    config_file = tmp_path / "linear4_ms.py"
    cfg.dump(str(config_file))
    _tool("train").main([str(config_file), "--work-dir", str(tmp_path / "train")])
    assert sorted(logged_losses(tmp_path / "train")) == [1, 2]
    checkpoint = tmp_path / "train" / "iter_2.pth"
    _tool("test").main([str(config_file), str(checkpoint), "--tta", "--work-dir", str(tmp_path / "test"),
                        "--cfg-options", "experiment_name=sail_mmseg_tta_test", "visualizer.name=sail_tta_vis"])
    logs = [p for p in (tmp_path / "test").glob("*/*.json")]
    assert logs, "tools/test.py wrote no metrics"
    metrics = json.loads(logs[0].read_text().splitlines()[-1])
    assert 0.0 <= metrics["mIoU"] <= 100.0


def test_demo_command_from_a_fresh_folder(tmp_path):
    """The two commands docs/segmentation.md gives, shortened to 6 iterations."""
    env_python = sys.executable
    subprocess.run([env_python, "-m", "sail_vision.mmseg.synthetic"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=120)
    assert (tmp_path / "data" / "sail_seg_demo" / "checkpoint" / "config.json").is_file()
    result = subprocess.run(
        [env_python, str(ROOT / "tools" / "train.py"), str(ROOT / "configs" / "sail" /
                                                          "sail-tiny_linear_1xb4-300_synthetic-64x64.py"),
         "--cfg-options", "train_cfg.max_iters=6", "train_cfg.val_interval=6", "default_hooks.checkpoint.interval=6"],
        cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    work_dir = tmp_path / "work_dirs" / "sail-tiny_linear_1xb4-300_synthetic-64x64"
    assert (work_dir / "iter_6.pth").is_file()
    assert "mIoU" in result.stdout + result.stderr


def test_train_reports_a_missing_config(tmp_path, capsys):
    import pytest

    with pytest.raises(SystemExit, match="not found"):
        _tool("train").main([str(tmp_path / "nope.py")])
