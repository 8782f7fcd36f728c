"""benchmarks/bench_mmseg_train.py runs at CI size (CPU, tiny checkpoint) and writes a complete JSON; its
dtype check fails when the encoder stops opting out of autocast (no timing assertions)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_mmseg_train.py"
CONFIGS = ("linear", "linear4", "upernet")


def _env(tmp_path: Path) -> dict:
    # The demo's tiny checkpoint is cached under SAIL_VISION_CACHE: keep the test's own.
    return {**os.environ, "SAIL_VISION_CACHE": str(tmp_path / "cache")}


def _run(cmd: list[str], tmp_path: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=_env(tmp_path), timeout=timeout)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_quick_run_writes_steps_per_second_and_keeps_the_backbone_dtype(tmp_path):
    results = tmp_path / "results"
    proc = _run([sys.executable, str(SCRIPT), "--quick", "--results-dir", str(results)], tmp_path)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "amp_speedup" in proc.stdout and "torch.autocast('cpu', bfloat16) stand-in" in proc.stdout
    data = json.loads((results / "bench_mmseg_train-quick.json").read_text())
    assert data["quick"] is True and data["device"] == "cpu" and data["checkpoint_preset"] == "tiny"
    # mmengine's AmpOptimWrapper needs a GPU and tools/train.py --amp says so: the CPU run uses the stand-in.
    assert data["amp_cpu_stand_in"] is True and "--amp needs a GPU" in data["train_py_amp_refusal"]
    assert data["all_dtypes_kept"] is True
    rows = data["rows"]
    assert [(r["config"], r["mode"]) for r in rows] == [(c, m) for c in CONFIGS for m in ("plain", "amp")]
    for row in rows:
        for key in ("steps_s", "images_s", "step_ms", "iter_wall_ms", "run_s", "first_loss", "last_loss"):
            assert _positive(row[key]), (key, row)
        assert len(row["step_times_s"]) == data["iters"] and all(_positive(t) for t in row["step_times_s"])
        assert row["batch"] == 4 and row["crop"] == "64x64"  # the tiny configs' batch size and crop
        assert row["images_s"] == pytest.approx(row["steps_s"] * row["batch"])
        assert row["peak_gpu_gb"] is None  # CPU: no GPU memory to report
        assert row["trainable_params"] > 0 and row["encoder_params"] > 0
        backbone = row["backbone_dtype"]
        assert backbone == row["encoder_dtype"] == "float32"  # as the tiny configs set model.backbone.dtype
        # The frozen encoder's states and matrix products stay in the configured dtype, also under autocast...
        assert row["encoder_state_dtypes"] == [backbone] and row["encoder_matmul_dtypes"] == [backbone], row
        assert row["dtype_kept"] is True
        assert row["backbone_map_dtypes"] == ["float32"]  # SAILBackbone's maps are always float32
        if row["mode"] == "amp":
            # ...while autocast is on around the backbone and the head computes in bfloat16.
            assert row["optim_wrapper"] == "SailCpuBf16AutocastOptimWrapper"
            assert row["autocast_at_backbone"] == [True] and row["head_logit_dtypes"] == ["bfloat16"]
        else:
            assert row["optim_wrapper"] == "OptimWrapper"
            assert row["autocast_at_backbone"] == [False] and row["head_logit_dtypes"] == ["float32"]
    summary = {s["config"]: s for s in data["summary"]}
    assert list(summary) == list(CONFIGS)
    for s in summary.values():
        for key in ("plain_steps_s", "amp_steps_s", "amp_speedup", "plain_images_s", "amp_images_s"):
            assert _positive(s[key]), (key, s)
        assert s["amp_encoder_dtype"] == s["backbone_dtype"] == "float32" and s["dtype_kept"] is True


def test_dtype_check_fails_when_the_encoder_runs_under_autocast(tmp_path):
    """With SailEncoder's autocast opt-out removed, the matmul dtypes show bfloat16 and the script exits 1."""
    results = tmp_path / "results"
    code = (
        "import contextlib, runpy, sys\n"
        "from sail_vision.encoder import SailEncoder\n"
        "SailEncoder._no_autocast = lambda self: contextlib.nullcontext()\n"
        f"sys.argv = [{str(SCRIPT)!r}, '--quick', '--configs', 'linear', '--warmup', '1', '--iters', '1',\n"
        f"            '--results-dir', {str(results)!r}]\n"
        f"runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n"
    )
    proc = _run([sys.executable, "-c", code], tmp_path)
    assert proc.returncode == 1, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "FAILED" in proc.stderr
    data = json.loads((results / "bench_mmseg_train-quick.json").read_text())
    amp = next(r for r in data["rows"] if r["mode"] == "amp")
    assert "bfloat16" in amp["encoder_matmul_dtypes"] and amp["dtype_kept"] is False
    assert data["all_dtypes_kept"] is False


def test_help_and_refusals(tmp_path):
    proc = _run([sys.executable, str(SCRIPT), "--help"], tmp_path, timeout=60)
    assert proc.returncode == 0 and "--quick" in proc.stdout and "--configs" in proc.stdout
    proc = _run([sys.executable, str(SCRIPT), "--device", "cpu", "--results-dir", str(tmp_path)], tmp_path,
                timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "--quick" in proc.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_full_run_refuses_without_cuda(tmp_path):
    proc = _run([sys.executable, str(SCRIPT), "--results-dir", str(tmp_path)], tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "CUDA" in lines[0] and "--quick" in lines[0], proc.stderr
    assert not list(tmp_path.glob("*.json"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_quick_run_on_cuda_uses_amp_optim_wrapper(tmp_path):
    """On a GPU the amp runs are tools/train.py --amp itself: float16 autocast in the head, the encoder unchanged."""
    results = tmp_path / "results"
    proc = _run([sys.executable, str(SCRIPT), "--quick", "--device", "cuda", "--configs", "linear", "upernet",
                 "--results-dir", str(results)], tmp_path)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    data = json.loads((results / "bench_mmseg_train-quick.json").read_text())
    assert data["device"] == "cuda:0" and data["amp_cpu_stand_in"] is False and data["all_dtypes_kept"] is True
    for row in data["rows"]:
        assert _positive(row["steps_s"]) and _positive(row["peak_gpu_gb"]), row
        assert row["encoder_state_dtypes"] == row["encoder_matmul_dtypes"] == [row["backbone_dtype"]], row
        if row["mode"] == "amp":
            assert row["optim_wrapper"] == "AmpOptimWrapper" and row["head_logit_dtypes"] == ["float16"], row
