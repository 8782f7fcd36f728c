"""Every benchmark script still runs at CI size and writes sane JSON (no timing assertions)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"


def _run(script: str, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=timeout)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def _load(name: str) -> dict:
    data = json.loads((RESULTS / f"{name}-quick.json").read_text())
    assert data["quick"] is True
    return data


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_throughput_quick():
    proc = _run("bench_throughput.py", "--quick")
    assert "speedup" in proc.stdout
    data = _load("bench_throughput")
    assert data["machine"]["torch_threads"] >= 1
    rows = data["rows"]
    # 2 dtypes x 1 resolution x 2 batches x 2 layers
    assert len(rows) == 8
    assert {r["dtype"] for r in rows} == {"bfloat16", "float32"}
    assert {r["layer_role"] for r in rows} == {"last", "middle"}
    for row in rows:
        for key in ("sail_img_s", "baseline_img_s", "speedup", "gflop_per_img", "matmul_gflop_s", "efficiency",
                    "flop_ratio", "baseline_efficiency"):
            assert _positive(row[key]), (key, row)
        assert row["flop_ratio"] > 1  # the baseline does strictly more work than sail-vision
        assert len(row["times_s"]["sail"]) == data["repeats"]
    for dtype, per_layer in data["sanity_rel_maxabs"].items():
        assert all(0 <= v <= 0.05 for v in per_layer.values()), (dtype, per_layer)


def test_memory_quick():
    _run("bench_memory.py", "--quick")
    data = _load("bench_memory")
    rows = data["rows"]
    assert [r["max_layer"] for r in rows] == [1, 4]
    for row in rows:
        for key in ("needed_bytes", "peak_rss_bytes", "budget_gb", "load_s", "encode_s", "import_rss_gb"):
            assert _positive(row[key]), (key, row)
        assert row["peak_rss_bytes"] > row["needed_bytes"]
        assert isinstance(row["met"], bool)
    needed = [r["needed_bytes"] for r in rows]
    assert needed == sorted(needed) and needed[0] < needed[-1]  # deeper layers need more weights


def test_memory_skips_on_small_disk(monkeypatch, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("bench_memory_mod", BENCH / "bench_memory.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "free_disk_bytes", lambda path: 5 * module.GB)
    args = type("Args", (), {"quick": False, "cache_dir": str(tmp_path), "preset": "sail-7b",
                             "dtype": "bfloat16", "layers": None})()
    result = module.run(args)
    assert result["rows"] == [] and "20 GB" in result["skipped"]
    assert "skipped" in capsys.readouterr().out


@pytest.mark.parametrize("script", ["bench_extract.py"])  # bench_probe_grid.py: test_bench_probe_grid.py
def test_helper_scripts_quick(script):
    _run(script, "--quick")
    data = _load(Path(script).stem)
    assert data


def test_run_all_help():
    proc = _run("run_all.py", "--help")
    for name in ("bench_throughput", "bench_memory", "bench_extract", "bench_probe_grid"):
        assert name in proc.stdout


def test_gpu_benchmark_quick_runs_on_any_device():
    _run("bench_gpu.py", "--quick", "--device", "cpu")
    data = _load("bench_gpu")
    assert len(data["encoder"]) == 4 and len(data["extract"]) == 2  # 2 resolutions x (last, middle) layers
    assert len(data["packed"]) == 8  # ... x (packed, grouped) on mixed grids
    assert {r["kernel"] for r in data["packed"]} == {"split", "sdpa per grid"}  # CPU: auto is split
    for row in data["encoder"]:
        assert _positive(row["images_s"]) and _positive(row["tflop_s"]), row
    for row in data["extract"]:
        assert row["images"] == 8 and _positive(row["extract_vs_encoder"]), row
        assert _positive(row["paired_ratio"]) and row["workers"] == 0, row
        assert len(row["times_s"]["encoder"]) == len(row["times_s"]["extract-w0"]) == 1
        assert row["features_max_abs_diff"] < 1e-2  # extract stores what the bare encoder computes
        assert row["gpu_busy"] is None  # CUDA only (torch.profiler kernel times)


def _bench_gpu_module():
    spec = importlib.util.spec_from_file_location("bench_gpu_mod", BENCH / "bench_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("intervals, length", [
    ([], 0.0),                                     # empty
    ([(0, 2), (1, 3)], 3.0),                       # overlapping
    ([(0, 10), (2, 3), (4, 9)], 10.0),             # nested
    ([(5, 6), (0, 1), (2, 4)], 4.0),               # disjoint, unsorted
    ([(0, 1), (1, 2)], 2.0),                       # touching
    ([(3, 3), (4, 2), (0, 1)], 1.0),               # empty and reversed intervals count nothing
    ([(0, 4), (1, 2), (3, 6), (8, 9), (8.5, 10)], 8.0),
])
def test_union_length(intervals, length):
    module = _bench_gpu_module()
    assert module.union_length(intervals) == pytest.approx(length)


def test_busy_fraction():
    module = _bench_gpu_module()
    assert module.busy_fraction([(0, 2), (1, 3), (6, 7)], 10.0) == pytest.approx(0.4)
    assert module.busy_fraction([], 5.0) == 0.0
    assert module.busy_fraction([(0, 1)], 0.0) is None


def test_device_intervals_keep_cuda_kernels_and_copies_apart():
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    module = _bench_gpu_module()

    def event(device, kind, name, start, end):
        return SimpleNamespace(device_type=device, activity_type=kind, name=name,
                               time_range=SimpleNamespace(start=start, end=end))

    events = [event(DeviceType.CPU, "cpu_op", "aten::mm", 0, 50),
              event(DeviceType.CUDA, "kernel", "sm90_gemm", 10, 20),
              event(DeviceType.CUDA, "kernel", "flash_fwd", 15, 30),
              event(DeviceType.CUDA, "gpu_memcpy", "Memcpy DtoH (Device -> Pinned)", 30, 32),
              event(DeviceType.CUDA, "gpu_memset", "Memset (Device)", 40, 41),
              event(DeviceType.CUDA, "gpu_user_annotation", "## enumerate(DataLoader) ##", 0, 100),
              event(DeviceType.CUDA, None, "Memcpy HtoD (Pinned -> Device)", 5, 6),  # torch without activity_type
              event(DeviceType.CUDA, None, "elementwise_kernel", 60, 61)]
    kernels, copies = module.device_intervals(events)
    assert kernels == [(10, 20), (15, 30), (60, 61)]
    assert copies == [(30, 32), (40, 41), (5, 6)]
    assert module.busy_fraction(kernels, 100.0) == pytest.approx(0.21)
    assert module.busy_fraction(kernels + copies, 100.0) == pytest.approx(0.25)


def test_extract_vs_encoder_quick():
    proc = _run("bench_extract.py", "--vs-encoder", "--quick")
    assert "extract_vs_encoder" in proc.stdout
    data = _load("bench_extract_vs_encoder")
    assert data["checkpoint"] == "tiny" and data["threads"] == 1 and data["target"] == 0.9
    rows = data["rows"]
    assert [r["workers"] for r in rows] == [0, 1]
    for row in rows:
        assert row["images"] == 8 and row["resolution"] == 32 and row["batch"] == 4, row
        for key in ("extract_images_s", "encoder_images_s", "extract_vs_encoder", "paired_ratio"):
            assert _positive(row[key]), (key, row)
        assert row["met"] == (row["extract_vs_encoder"] >= 0.9)
    assert set(data["times_s"]) == {"encoder", "extract-w0", "extract-w1"}
    assert all(len(t) == data["rounds"] == 1 for t in data["times_s"].values())
    assert data["features_max_abs_diff"] == 0.0  # float32 on the CPU: the same bytes as the bare encoder
    assert len(data["load_average_before"]) == len(data["load_average_after"]) == 3


def test_sail_7b_flops_per_image_match_the_paper_figure():
    module = _bench_gpu_module()
    from sail_vision.checkpoint_generator import preset_config

    flops = module.flops_per_image(preset_config("sail-7b"), 7 * 7 + 2, 32)  # 224 px: 49 patches + 2 tokens
    assert 0.68e12 < flops < 0.73e12  # "about 0.69 TFLOP per image" (issue 13)


def test_packing_quick():
    proc = _run("bench_packing.py", "--quick")
    assert "packed_vs_grouped" in proc.stdout
    data = _load("bench_packing")
    modes = {row["mode"]: row for row in data["rows"]}
    assert set(modes) == {"packed", "grouped", "single"}
    assert all(_positive(row["img/s"]) for row in modes.values())
    assert modes["single"]["forwards"] == data["images"] == 12
    assert modes["packed"]["forwards"] < modes["grouped"]["forwards"] < modes["single"]["forwards"]
    summary = data["summary"][0]
    assert summary["packed_vs_single_max_abs_diff"] <= 1e-5 and summary["distinct_grids"] > 1


def test_shard_memory_quick():
    proc = _run("bench_shard_memory.py", "--quick")
    assert "peak RSS with / without the member" in proc.stdout
    data = _load("bench_shard_memory")
    assert [(r["member"], r["read_as"]) for r in data["rows"]] == [("none", "tar.gz"), ("member", "tar.gz"),
                                                                   ("none", "pipe"), ("member", "pipe")]
    for row in data["rows"]:
        assert (row["images"], row["ok"], row["failed"]) == (6, 6, 0) and _positive(row["peak_rss_bytes"])
    assert data["rows"][1]["member_bytes"] == 8 * 1024 * 1024
    assert set(data["rss_ratio_member_vs_none"]) == {"tar.gz", "pipe"}
