"""mmsegmentation's own tools and APIs on our configs and checkpoints, with no environment variable.

The tools are the copies shipped inside the installed mmseg package (``mmseg/.mim/tools``); each runs
in a fresh interpreter, as a user would run it. Two of them are broken upstream for every model on
this stack; their tests pin the upstream error, so a fixed mmseg release shows up here (and
docs/segmentation.md, "mmseg's own tools", is then updated).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mmseg
import pytest

MIM_TOOLS = Path(mmseg.__file__).parent / ".mim" / "tools"


def _run(args, cwd, timeout=300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, (result.stdout[-1500:], result.stderr[-3000:])
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def mmseg_trained(demo_config, tmp_path_factory):
    """mmseg's tools/train.py on the demo config: 4 iterations, then validation. Returns (work dir, checkpoint)."""
    work = tmp_path_factory.mktemp("mmseg_train")
    output = _ok(_run([MIM_TOOLS / "train.py", demo_config, "--work-dir", work, "--cfg-options",
                       "train_cfg.max_iters=4", "train_cfg.val_interval=4", "default_hooks.checkpoint.interval=4"],
                      cwd=work))
    assert "mIoU" in output
    return work, work / "iter_4.pth"


def test_mmseg_train_writes_a_weights_only_checkpoint_and_resumes(mmseg_trained, demo_config):
    import torch

    work, checkpoint = mmseg_trained
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(checkpoint)) == []
    output = _ok(_run([MIM_TOOLS / "train.py", demo_config, "--work-dir", work, "--resume", "--cfg-options",
                       "train_cfg.max_iters=6", "train_cfg.val_interval=6", "default_hooks.checkpoint.interval=6"],
                      cwd=work))
    assert "resumed epoch: 0, iter: 4" in output and (work / "iter_6.pth").is_file()


def test_mmseg_test_with_tta_out_and_show_dir_then_confusion_matrix(mmseg_trained, demo_config, tmp_path):
    _, checkpoint = mmseg_trained
    first_four = ["--cfg-options", "test_dataloader.dataset.indices=4"]  # TTA runs 6 passes per image
    output = _ok(_run([MIM_TOOLS / "test.py", demo_config, checkpoint, "--tta", "--work-dir", tmp_path / "w",
                       "--out", tmp_path / "pred", "--show-dir", tmp_path / "show", *first_four], cwd=tmp_path))
    assert "mIoU" in output
    assert len(list((tmp_path / "pred").glob("*.png"))) == 4
    assert len(list((tmp_path / "show").rglob("*.png"))) == 4  # the demo draws every test image
    _ok(_run([MIM_TOOLS / "analysis_tools" / "confusion_matrix.py", demo_config, tmp_path / "pred",
              tmp_path / "cm", *first_four], cwd=tmp_path))
    assert (tmp_path / "cm" / "confusion_matrix.png").is_file()


def test_mmseg_benchmark(mmseg_trained, demo_config, tmp_path):
    """benchmark.py times 200 images after 5 warm-up ones: repeat the 8 test images 25 times."""
    from mmengine.config import Config

    _, checkpoint = mmseg_trained
    cfg = Config.fromfile(str(demo_config))
    cfg.test_dataloader.dataset = dict(type="RepeatDataset", times=25, dataset=cfg.test_dataloader.dataset)
    config = tmp_path / "repeated.py"
    cfg.dump(str(config))
    output = _ok(_run([MIM_TOOLS / "analysis_tools" / "benchmark.py", config, checkpoint, "--work-dir",
                       tmp_path / "w", "--log-interval", "100"], cwd=tmp_path))
    assert "Overall fps:" in output and "Average fps of 1 evaluations: nan" not in output


def test_mmseg_apis_as_a_program_s_first_import(mmseg_trained, demo_config, seg_data_root, tmp_path,
                                                 crafted_checkpoint):
    """init_model + inference_model and MMSegInferencer predict; a crafted checkpoint is refused by both."""
    _, checkpoint = mmseg_trained
    image = sorted((seg_data_root / "images" / "validation").glob("*.jpg"))[0]
    evil = crafted_checkpoint(tmp_path / "evil.pth", tmp_path / "MARKER")
    code = textwrap.dedent(f"""
        from mmseg.apis import MMSegInferencer, inference_model, init_model
        model = init_model({str(demo_config)!r}, {str(checkpoint)!r}, device='cpu')
        result = inference_model(model, {str(image)!r})
        assert tuple(result.pred_sem_seg.data.shape) == (1, 64, 64), result.pred_sem_seg.data.shape
        assert model.dataset_meta['classes'] == ('red', 'green', 'blue', 'yellow')
        out = MMSegInferencer({str(demo_config)!r}, {str(checkpoint)!r}, device='cpu')({str(image)!r})
        assert out['predictions'].shape == (64, 64), out['predictions'].shape
        for load in (lambda: init_model({str(demo_config)!r}, {str(evil)!r}, device='cpu'),
                     lambda: MMSegInferencer({str(demo_config)!r}, {str(evil)!r}, device='cpu')):
            try:
                load()
            except Exception as exc:
                assert type(exc).__name__ == 'UnsafeCheckpointError' and 'posix.system' in str(exc), exc
            else:
                raise AssertionError('the crafted checkpoint loaded')
        print('apis ok')
    """)
    assert "apis ok" in _ok(_run(["-c", code], cwd=tmp_path))
    assert not (tmp_path / "MARKER").exists()


def test_mmseg_test_and_resume_refuse_a_crafted_checkpoint(demo_config, tmp_path, crafted_checkpoint):
    evil = crafted_checkpoint(tmp_path / "evil.pth", tmp_path / "MARKER")
    for args in ([MIM_TOOLS / "test.py", demo_config, evil, "--work-dir", tmp_path / "t"],
                 [MIM_TOOLS / "train.py", demo_config, "--resume", "--work-dir", tmp_path / "r", "--cfg-options",
                  f"load_from={evil}"]):
        result = _run(args, cwd=tmp_path)
        assert result.returncode != 0 and "UnsafeCheckpointError" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "MARKER").exists()


@pytest.mark.parametrize("tool, args, upstream_error", [
    # open-mmlab/mmsegmentation#3241 (fixed on main by #3551, not in any release as of mmseg 1.2.2)
    ("get_flops.py", ["--shape", "64", "64"], '"input_shape" and "inputs" cannot be both set'),
    # open-mmlab/mmsegmentation#3405 (fix proposed in #3566): cv2.rectangle on a non-contiguous mask
    ("browse_dataset.py", ["--not-show", "--output-dir", "{tmp}/browse"], "Layout of the output array img"),
])
def test_tools_broken_upstream_fail_as_reported(tool, args, upstream_error, demo_config, tmp_path):
    args = [a.format(tmp=tmp_path) for a in args]
    result = _run([MIM_TOOLS / "analysis_tools" / tool, demo_config, *args], cwd=tmp_path)
    assert result.returncode != 0 and upstream_error in result.stderr, result.stderr[-2000:]
