"""benchmarks/bench_probe_grid.py runs at CI size and writes a complete JSON (no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_probe_grid.py"
RESULTS = ROOT / "benchmarks" / "results"


def _run(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--repeats", "1", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _check(data: dict, device: str) -> None:
    assert data["quick"] is True and data["device"] == device
    (case,) = data["cases"]
    assert (case["rows"], case["dim"], case["classes"], case["grid_heads"]) == (4000, 256, 10, 26)
    for key in ("one_config_s", "grid_s", "ratio", "separate_runs_estimate_s"):
        assert math.isfinite(case[key]) and case[key] > 0, key
    assert case["separate_runs_estimate_s"] == pytest.approx(case["one_config_s"] * 26, rel=1e-2)
    assert 10 < case["grid_best_top1"] <= 100 and 10 < case["one_config_top1"] <= 100  # 10 classes: chance is 10


def test_quick_run_on_cpu():
    proc = _run("--threads", "1")
    assert "13x2 grid s" in proc.stdout
    _check(json.loads((RESULTS / "bench_probe_grid-quick.json").read_text()), "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_quick_run_on_cuda():
    _run("--device", "cuda")
    _check(json.loads((RESULTS / "bench_probe_grid-cuda0-quick.json").read_text()), "cuda:0")
