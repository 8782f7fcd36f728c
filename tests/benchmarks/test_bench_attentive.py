"""benchmarks/bench_attentive.py runs at CI size and writes a complete JSON (no timing assertions)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_on_cpu():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_attentive.py"), "--quick", "--threads",
                           "1"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "head-steps/s" in proc.stdout
    data = json.loads((ROOT / "benchmarks" / "results" / "bench_attentive-quick.json").read_text())
    case = data["case"]
    assert data["quick"] is True and data["device"] == "cpu"
    assert (case["rows"], case["tokens"], case["dim"], case["grid_points"], case["steps"]) == (512, 16, 64, 8, 4)
    for grid in ("linear", "attentive"):
        for key in ("seconds", "steps_per_s", "head_steps_per_s"):
            assert math.isfinite(case[grid][key]) and case[grid][key] > 0, (grid, key)
        assert 0 <= case[grid]["train_top1"] <= 100
    assert case["attentive"]["parameters_per_head"] == 64 + 2 * 64 * 64 + 64 * 10  # query, keys, values, linear
    assert case["linear"]["parameters_per_head"] == 64 * 10 + 10
