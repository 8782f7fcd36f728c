"""gpu_check.sh's CPU-side pieces: argument handling, the no-CUDA exit, and JSON -> BENCHMARKS.md table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
RENDER = ROOT / "benchmarks" / "render_gpu_table.py"


def _check(*args, **env):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, **env})


def test_help_and_bad_arguments():
    assert _check("--help").returncode == 0 and "bench_gpu.py" in _check("--help").stdout
    bad = _check("--fast")
    assert bad.returncode == 2 and "unknown argument '--fast'" in bad.stderr
    assert _check("--out").returncode == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_without_cuda_it_stops_with_a_message(tmp_path):
    run = _check("--out", str(tmp_path / "out"))
    assert run.returncode == 3 and "no CUDA GPU visible to torch" in run.stderr
    assert not (tmp_path / "out").exists()  # nothing started


def _gpu_json(of_peak=0.6, ratio=0.93, busy=0.88, quick=False):
    return {"quick": quick, "gpu": "NVIDIA H100 80GB HBM3", "device": "cuda:0", "peak_tflops": 989.0,
            "machine": {"torch": "2.6.0", "date": "2026-12-06"},
            "encoder": [{"resolution": r, "layer": layer, "batch": 16, "dtype": "bfloat16", "images_s": 100.0,
                         "tflop_s": 500.0, "of_peak": of_peak if (r, layer) == (448, 32) else 0.4,
                         "peak_gpu_gb": 20.0} for r in (224, 448) for layer in (32, 16)],
            "packed": [{"resolution": 448, "layer": 32, "batching": "packed", "kernel": "varlen", "images_s": 90.0,
                        "of_peak": 0.5}],
            "extract": [{"resolution": r, "images": 128, "workers": 4, "extract_images_s": 90.0,
                         "encoder_images_s": 100.0, "extract_vs_encoder": ratio, "gpu_busy": busy}
                        for r in (224, 448)]}


def test_render_states_each_goal(tmp_path):
    gpu = tmp_path / "bench_gpu.json"
    gpu.write_text(json.dumps(_gpu_json()))
    probes = tmp_path / "probes.json"
    probes.write_text(json.dumps({"rows": [{"probe": "knn", "bank_rows": 200000, "queries_s": 5000.0,
                                            "seconds": 2.0}]}))
    out = tmp_path / "table.md"
    run = subprocess.run([sys.executable, str(RENDER), str(gpu), str(probes), "--out", str(out)], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    text = out.read_text()
    assert text == run.stdout and "NVIDIA H100 80GB HBM3" in text and "| 448 | 32 | packed | varlen |" in text
    assert "fraction of dense bf16 peak: 0.6 (met; goal >= 0.55)" in text
    assert "extract vs the bare encoder (lowest row): 0.93 (met; goal >= 0.9)" in text
    assert "GPU busy during extract (lowest row): 0.88 (MISSED; goal >= 0.9)" in text
    assert "| knn | 200000 | 5000 | - | 2 | - |" in text


def test_render_refuses_quick_or_missing_json(tmp_path):
    quick = tmp_path / "quick.json"
    quick.write_text(json.dumps(_gpu_json(quick=True)))
    for path in (quick, tmp_path / "missing.json"):
        run = subprocess.run([sys.executable, str(RENDER), str(path)], capture_output=True, text=True, timeout=60)
        assert run.returncode == 2 and run.stderr.startswith("render_gpu_table: error: "), run.stderr


def test_bench_probes_gpu_quick():
    script = ROOT / "benchmarks" / "bench_probes_gpu.py"
    run = subprocess.run([sys.executable, str(script), "--quick", "--device", "cpu"], capture_output=True, text=True,
                         cwd=ROOT, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    data = json.loads((ROOT / "benchmarks" / "results" / "bench_probes_gpu-quick.json").read_text())
    knn, seg = data["rows"]
    assert knn["probe"] == "knn" and knn["queries_s"] > 0 and knn["bank_rows"] == 5000
    assert seg["probe"] == "segmentation" and seg["train_images_epochs_s"] > 0
