"""tools/train.py, tools/test.py and `sail-vision segment` as users run them, including what they refuse."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

ROOT = Path(__file__).resolve().parents[2]
DEMO = "linear_sail-tiny_1xb4-300_synthetic-64x64"


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(f"sail_tools_{name}", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _short(cfg, iters: int):
    cfg.merge_from_dict(dict(train_cfg=dict(max_iters=iters, val_interval=10 * iters, val_begin=10 * iters),
                             default_hooks=dict(checkpoint=dict(interval=iters))))
    return cfg


def _run_tool(script: str, *args, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_train_then_test_with_tta_and_show_dir(tiny_cfg, tmp_path, logged_losses):
    cfg = _short(tiny_cfg("linear4-ms_sail-tiny_1xb4-300_synthetic-64x64"), 2)
    config_file = tmp_path / "linear4_ms.py"
    cfg.dump(str(config_file))
    _tool("train").main([str(config_file), "--work-dir", str(tmp_path / "train")])
    assert sorted(logged_losses(tmp_path / "train")) == [1, 2]
    checkpoint = tmp_path / "train" / "iter_2.pth"
    _tool("test").main([str(config_file), str(checkpoint), "--tta", "--work-dir", str(tmp_path / "test"),
                        "--show-dir", str(tmp_path / "show"), "--out", str(tmp_path / "labels"),
                        "--cfg-options", "experiment_name=sail_mmseg_tta_test", "visualizer.name=sail_tta_vis",
                        "test_dataloader.dataset.indices=4"])  # TTA runs 6 passes per image
    logs = [p for p in (tmp_path / "test").glob("*/*.json")]
    assert logs, "tools/test.py wrote no metrics"
    metrics = json.loads(logs[0].read_text().splitlines()[-1])
    assert 0.0 <= metrics["mIoU"] <= 100.0
    assert len(list((tmp_path / "show").rglob("*.png"))) == 4  # every test image is drawn
    assert len(list((tmp_path / "labels").glob("*.png"))) == 4


def test_demo_command_from_a_fresh_folder(tmp_path):
    """The two commands docs/segmentation.md gives, shortened to 6 iterations."""
    subprocess.run([sys.executable, "-m", "sail_vision.mmseg.synthetic"], cwd=tmp_path, check=True,
                   capture_output=True, timeout=120)
    assert (tmp_path / "data" / "sail_seg_demo" / "checkpoint" / "config.json").is_file()
    result = _run_tool("train.py", ROOT / "configs" / "sail" / f"{DEMO}.py", "--cfg-options", "train_cfg.max_iters=6",
                       "train_cfg.val_interval=6", "default_hooks.checkpoint.interval=6", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    work_dir = tmp_path / "work_dirs" / DEMO
    assert (work_dir / "iter_6.pth").is_file()
    output = result.stdout + result.stderr
    assert "mIoU" in output and "| yellow |" in output and "| wall |" not in output  # the demo's own 4 classes


def _fails(capsys, tool: str, *args) -> str:
    """Run tools/<tool>.py's main in this process; it must exit 2 after one line on stderr, nothing on stdout."""
    with pytest.raises(SystemExit) as info:
        _tool(tool).main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert info.value.code == 2, err[-2000:]
    assert out == "" and err.count("\n") == 1, (args, err[-2000:])  # one line, before any config dump
    return err


@pytest.mark.parametrize("how", ["train --resume", "test.py", "sail-vision segment"])
def test_crafted_checkpoint_is_never_run_by_our_tools(how, demo_config, seg_data_root, tmp_path, capsys,
                                                      crafted_checkpoint):
    from sail_vision.cli import main

    marker = tmp_path / "MARKER"
    evil = crafted_checkpoint(tmp_path / "evil.pth", marker)
    if how == "train --resume":
        err = _fails(capsys, "train", demo_config, "--resume", evil, "--work-dir", tmp_path / "w")
        prefix = "train.py: error: "
    elif how == "test.py":
        err = _fails(capsys, "test", demo_config, evil, "--work-dir", tmp_path / "w")
        prefix = "test.py: error: "
    else:
        image = sorted((seg_data_root / "images" / "validation").glob("*.jpg"))[0]
        code = main(["segment", str(image), "--config", str(demo_config), "--checkpoint", str(evil),
                     "--out", str(tmp_path / "o.png")])
        out, err = capsys.readouterr()
        assert code == 2 and out == "" and err.count("\n") == 1, err
        prefix = "sail-vision segment: error: "
    assert err.startswith(prefix + f"checkpoint {str(evil)!r} refused") and "posix.system" in err
    assert not marker.exists()


@pytest.mark.parametrize("args, expected", [
    (["train", "{tmp}/nope.py"], "config file"),
    (["train", "{cfg}", "--cfg-options", "train_dataloader.dataset.data_root=/no/such/folder"],
     "train_dataloader.dataset.data_root '/no/such/folder' is not a folder"),
    (["train", "{cfg}", "--cfg-options", "model.backbone.checkpoint=/no/such/sail"],
     "model.backbone: SAILBackbone checkpoint '/no/such/sail' is not a folder"),
    (["train", "{cfg}", "--cfg-options", "model.backbone.out_indices=[9]"], "out of range"),
    (["train", "{cfg}", "--cfg-options", "model.backbone.dtype=float64"], "float64"),
    (["train", "{cfg}", "--cfg-options", "model.backbone.depth=3"], "unexpected keyword argument 'depth'"),
    (["train", "{cfg}", "--cfg-options", "train_cfg.max_iters=abc"], "expected a number"),
    (["train", "{cfg}", "--cfg-options", "train_cfg.max_iters"], "write KEY=VALUE"),
    (["train", "{cfg}", "--cfg-options", "train_cfg.max_iters.x=3"], "train_cfg.max_iters.x=3"),
    (["train", "{cfg}", "--resume", "{tmp}/missing.pth"], "missing.pth' not found"),
    (["test", "{cfg}", "{tmp}/missing.pth"], "missing.pth' not found"),
    (["test", "{cfg}", "{tmp}/missing.pth", "--cfg-options", "test_dataloader.dataset.data_prefix.img_path=nowhere"],
     "data_prefix.img_path 'nowhere'"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_missing_paths_and_bad_options_are_one_line_errors_before_the_config_dump(args, expected, demo_config,
                                                                                  tmp_path, capsys):
    args = [a.format(cfg=demo_config, tmp=tmp_path) for a in args]
    err = _fails(capsys, *args)
    assert err.startswith(f"{args[0]}.py: error: ") and expected in err, err


def test_a_checkpoint_of_another_model_is_refused_not_half_loaded(tmp_path, demo_config, capsys):
    """mmengine only warns when weights are missing or of another shape; test.py, --resume and segment refuse."""
    from sail_vision.cli import main

    cfg = _short(Config.fromfile(str(demo_config)), 1)
    cfg.work_dir = str(tmp_path / "w")
    config = tmp_path / "c.py"
    cfg.dump(str(config))
    _tool("train").main([str(config)])
    capsys.readouterr()
    checkpoint = tmp_path / "w" / "iter_1.pth"
    five = ["--cfg-options", "model.decode_head.num_classes=5"]
    expected = ("does not fit the model of this config: weights 2 of another shape "
                "(decode_head.conv_seg.bias: checkpoint (4,), model (5,); decode_head.conv_seg.weight: "
                "checkpoint (4, 256, 1, 1), model (5, 256, 1, 1))")
    for tool, args in (("test", [config, checkpoint, "--work-dir", tmp_path / "t", *five]),
                       ("train", [config, "--resume", checkpoint, "--work-dir", tmp_path / "r", *five])):
        with pytest.raises(SystemExit) as info:
            _tool(tool).main([str(a) for a in args])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert info.value.code == 2 and err.startswith(f"{tool}.py: error: checkpoint") and expected in err, err
    image = next((Path(cfg.test_dataloader.dataset.data_root) / "images" / "validation").glob("*.jpg"))
    assert main(["segment", str(image), "--config", str(config), "--checkpoint", str(checkpoint),
                 "--out", str(tmp_path / "o.png"), *five]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_amp_on_cpu_is_a_clear_error(demo_config, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available: --amp is allowed")
    assert _fails(capsys, "train", demo_config, "--amp").startswith("train.py: error: --amp needs a GPU")


def test_a_second_training_on_the_same_work_dir_stops_at_once(tmp_path):
    from sail_vision.folder_lock import FolderInUseError
    from sail_vision.mmseg.launch import work_dir_lock

    with work_dir_lock(tmp_path / "w", "train.py"):
        with pytest.raises(FolderInUseError, match=r"--work-dir .*another sail-vision run is writing there "
                                                   r"\(pid \d+ on .*running 'train.py'"):
            with work_dir_lock(tmp_path / "w", "train.py"):
                pass
    with work_dir_lock(tmp_path / "w", "train.py"):  # released when the first run ends
        pass
