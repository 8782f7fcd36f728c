"""bench_engines.py --quick: one process, 2 torchrun ranks and (when Ray is installed) 2 Ray actors
write the same bytes; the RSS runs cross several parts. No timing assertions."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_engines_quick(tmp_path):
    engines = ["single", "torchrun-2"] + (["ray-2", "ray-defaults"] if importlib.util.find_spec("ray") else [])
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_engines.py"), "--quick", "--engines",
                           *engines, "--cache-dir", str(tmp_path / "cache")], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((ROOT / "benchmarks" / "results" / "bench_engines-quick.json").read_text())
    assert [row["engine"] for row in data["engines"]] == engines
    for row in data["engines"]:
        assert row["same_bytes_as_single"] is True, row
        assert row["parts"] == 4 and math.isfinite(row["images_s"]) and row["images_s"] > 0
    counts = [(m["count"], m["parts"], m["images"]) for m in data["memory"]]
    assert counts == [(50, 1, 50), (200, 4, 200)]
    assert all(m["peak_rss_bytes"] > 0 for m in data["memory"]) and math.isfinite(data["rss_growth"])
