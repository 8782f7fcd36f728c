"""bench_loader.py runs at CI size and writes sane JSON (no timing assertions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_loader_quick():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_loader.py"), "--quick"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((ROOT / "benchmarks" / "results" / "bench_loader-quick.json").read_text())
    assert data["quick"] is True and [r["jpeg"] for r in data["rows"]] == ["500x375", "1600x1200"]
    small, large = data["rows"]
    for row in data["rows"]:
        assert row["loader_equals_pil"] is True  # the exact loader gives bare PIL's pixels
        for key in ("pil_img_s", "loader_img_s", "loader_draft_img_s", "loader_vs_pil", "draft_speedup"):
            assert row[key] > 0, (key, row)
    assert small["pixel_mean_abs_diff"] == 0  # 224 px from 500x375: no DCT scaling applies
    assert large["pixel_mean_abs_diff"] > 0 and 0 < large["feature_rel_diff_median"] < 0.2
