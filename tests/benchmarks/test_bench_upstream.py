"""bench_upstream.py: the FLOP model, input checks and the sail-vision worker need no upstream code;
``--quick`` against upstream's modeling_sail.py runs where scripts/upstream_env.sh has built it."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_upstream_mod", BENCH / "bench_upstream.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _run(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "bench_upstream.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=timeout)


# ---------------------------------------------------------------------------- no upstream needed
def test_forward_flops_by_hand(bench):
    shape = bench.ModelShape(hidden=8, intermediate=16, layers=4, heads=2, kv_heads=1, head_dim=4, vocab=10,
                             patch=2)
    nh, nw = 2, 3
    n, seq = 6, 8  # 6 patches + <vision> + </vision>
    embed = 2 * n * (3 * 2 * 2) * 8
    per_block = (2 * seq * 8 * (8 + 2 * 4)  # q (8) + k, v (4 each)
                 + 2 * seq * 8 * 8  # o
                 + 2 * 2 * seq * seq * 8  # q k^T, p v
                 + 2 * seq * 3 * 8 * 16)  # gate, up, down
    head = 2 * seq * 8 * 10
    assert bench.forward_flops(shape, nh, nw, 4) == embed + 4 * per_block
    assert bench.forward_flops(shape, nh, nw, 4, lm_head=True) == embed + 4 * per_block + head
    assert bench.flop_ratio(shape, nh, nw, 4) == pytest.approx((embed + 4 * per_block + head) / (embed + 4 * per_block))
    assert bench.flop_ratio(shape, nh, nw, 2) == pytest.approx((embed + 4 * per_block + head) / (embed + 2 * per_block))


def test_flop_ratio_small_preset(bench):
    """The benchmark's model: upstream's LM head costs ~3 of the 12 blocks; layer 6 needs half the blocks."""
    from sail_vision.checkpoint_generator import preset_config

    shape = bench.ModelShape.from_config(preset_config("small").to_dict())
    assert (shape.hidden, shape.layers, shape.head_dim, shape.vocab) == (1024, 12, 128, 32000)
    last_224, mid_224 = bench.flop_ratio(shape, 7, 7, 12), bench.flop_ratio(shape, 7, 7, 6)
    last_448 = bench.flop_ratio(shape, 14, 14, 12)
    assert 1.2 < last_224 < 1.26 and 1.2 < last_448 < 1.26
    assert 2.35 < mid_224 < 2.5


def test_compare_hidden(bench):
    ref = torch.tensor([[1.0, -4.0], [2.0, 0.5]])
    got = ref.clone()
    got[1, 0] += 0.02
    result = bench.compare_hidden(ref, got)
    assert result["max_abs_diff"] == pytest.approx(0.02, rel=1e-5)
    assert result["max_abs_ref"] == 4.0 and result["rel_diff"] == pytest.approx(0.005, rel=1e-5)
    with pytest.raises(bench.WorkerError, match="shapes differ"):
        bench.compare_hidden(ref, ref[:1])


@pytest.mark.parametrize("case", ["missing-dir", "no-modeling-file", "missing-python"])
def test_missing_upstream_is_a_one_line_error(tmp_path, case):
    empty = tmp_path / "empty"
    empty.mkdir()
    fake = tmp_path / "checkout"
    fake.mkdir()
    (fake / "modeling_sail.py").write_text("")
    args = {"missing-dir": ["--upstream", str(tmp_path / "nope")],
            "no-modeling-file": ["--upstream", str(empty)],
            "missing-python": ["--upstream", str(fake), "--upstream-python", str(tmp_path / "no-python")]}[case]
    proc = _run("--quick", *args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: --upstream") and "scripts/upstream_env.sh" in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_help_explains_options():
    proc = _run("--help")
    assert proc.returncode == 0
    for option in ("--upstream", "--upstream-python", "--quick", "--preset", "--rounds", "--rounds-448", "--threads"):
        assert option in proc.stdout


def test_upstream_worker_reports_a_missing_module(bench, tmp_path):
    """A worker that cannot import upstream's code says so (the driver then stops with its log)."""
    worker = bench.Worker("upstream", sys.executable, ["--side", "upstream", "--upstream", str(tmp_path)], tmp_path, 1)
    try:
        with pytest.raises(bench.WorkerError, match="modeling_sail"):
            worker.wait_ready()
    finally:
        worker.close()


def test_sail_worker_matches_in_process_encoder(bench, tmp_path, tiny_checkpoint):
    """The sail side of the protocol (load, inputs, time, output) without any upstream code."""
    from sail_vision import SailEncoder

    inputs = bench.build_inputs(tiny_checkpoint, px=32, batch=2, seed=0)
    assert inputs["patches"].shape == (2, 4, 4, 3, 8, 8)
    seq = 4 * 4 + 2
    assert inputs["input_ids"].shape == (2, seq) and inputs["attention_mask"].shape == (2, 1, seq, seq)
    assert inputs["position_ids"].shape == (3, 2, seq)
    assert inputs["vision_patch_indices"][1, 1:-1].tolist() == list(range(16, 32))
    assert inputs["vision_patch_indices"][:, [0, -1]].eq(-1).all()
    torch.save(inputs, tmp_path / "inputs.pt")
    worker = bench.sail_worker(tmp_path, threads=1)
    try:
        worker.wait_ready()
        assert worker.request(op="hello")["torch"] == torch.__version__
        worker.request(op="load", checkpoint=str(tiny_checkpoint), dtype="float32", layers=[2, 4])
        worker.request(op="inputs", file=str(tmp_path / "inputs.pt"))
        times = worker.request(op="time", layer=2, reps=2)["times"]
        assert len(times) == 2 and all(t > 0 for t in times)
        worker.request(op="output", layer=2, file=str(tmp_path / "out.pt"))
        with pytest.raises(bench.WorkerError, match="unknown op"):
            worker.request(op="nonsense")
    finally:
        worker.close()
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    want = SailEncoder.from_pretrained(tiny_checkpoint, max_layer=2).encode_patches(inputs["patches"], [2])
    assert bench.compare_hidden(want.hidden_states[2], got)["max_abs_diff"] == 0.0


# ---------------------------------------------------------------------------- against upstream
def test_quick_against_upstream(bench):
    try:
        bench.check_upstream(bench.DEFAULT_UPSTREAM, bench.DEFAULT_UPSTREAM_PYTHON)
    except bench.UpstreamUnavailable as exc:
        pytest.skip(f"upstream SAIL not available: {exc} (or point SAIL_UPSTREAM_DIR and "
                    f"SAIL_UPSTREAM_PYTHON at an existing one)")
    proc = _run("--quick", timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "speed_ratio" in proc.stdout and "parity" in proc.stdout
    data = json.loads((RESULTS / "bench_upstream-quick.json").read_text())
    assert data["quick"] is True and data["preset"] == "tiny"
    assert data["upstream"]["transformers"].startswith("4.")
    assert data["sail_worker"]["torch"] == data["upstream"]["torch"]
    assert data["parity_passed"] is True
    assert data["layers"] == {"last": 4, "mid": 2}
    (cell,) = data["parity"].values()
    assert set(cell) == {"2", "4"}
    for result in cell.values():
        assert result["passed"] and result["max_abs_diff"] <= 1e-4 * result["max_abs_ref"]
    rows = data["rows"]
    assert [r["layer_role"] for r in rows] == ["last", "middle"]
    for row in rows:
        assert (row["dtype"], row["px"], row["batch"]) == ("float32", 32, 2)
        for key in ("upstream_s_per_img", "sail_s_per_img", "speed_ratio", "paired_ratio", "best_ratio", "flop_ratio",
                    "ratio_vs_flops",
                    "upstream_matmul_frac", "sail_matmul_frac", "matmul_gflop_s", "target_ratio"):
            assert isinstance(row[key], float) and math.isfinite(row[key]) and row[key] > 0, (key, row)
        assert row["flop_ratio"] > 1
        assert row["ratio_vs_flops"] == pytest.approx(row["speed_ratio"] / row["flop_ratio"])
        assert isinstance(row["target_met"], bool)
        assert row["parity_max_abs_diff"] <= 1e-4
        for side in ("upstream", "sail", "matmul"):
            assert len(row["times_s"][side]) == data["rounds"]
    assert rows[1]["flop_ratio"] > rows[0]["flop_ratio"]  # layer 2 of 4 is cheaper than layer 4
