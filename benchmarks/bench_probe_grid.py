"""Cost of the one-pass linear grid (13 learning rates x 2 weight decays) against one configuration.

Synthetic float16 features are written to a memory-mapped .npy file (like `sail-vision extract`
output) and streamed in shuffled chunks by the same code `sail-vision probe` uses; each case is
timed end to end (statistics pass + training epochs + evaluation). Prints a table and saves JSON
under benchmarks/results/.

    python benchmarks/bench_probe_grid.py                  # a few cases, about a minute or two on 2 cores
    python benchmarks/bench_probe_grid.py --quick          # seconds, for CI
    python benchmarks/bench_probe_grid.py --device cuda    # the same cases on a GPU (chunks moved once, float16)
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sail_vision.probes import FeatureInput, load_arrays
from sail_vision.probes.linear import LinearConfig, evaluate_grid, train_grid

RESULTS = Path(__file__).resolve().parent / "results"


def make_features(folder: Path, rows: int, dim: int, classes: int, seed: int = 0):
    """Class-clustered float16 features saved as .npy (memory-mapped when loaded) and int labels."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)).astype(np.float32)
    labels = rng.integers(0, classes, rows)
    path = folder / f"x_{rows}_{dim}.npy"
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(rows, dim))
    for start in range(0, rows, 8192):
        stop = min(rows, start + 8192)
        out[start:stop] = centres[labels[start:stop]] + 2.0 * rng.normal(size=(stop - start, dim))
    out.flush()
    del out
    return load_arrays(path, labels, name="feat")


def time_case(data, classes: int, grid, epochs: int, batch: int, repeats: int, device: str = "cpu") -> dict:
    config = LinearConfig(epochs=epochs, batch_size=batch, standardize=True, device=device)
    rows = np.arange(data.num_rows)
    inputs = [FeatureInput(("feat",))]
    best = None
    for _ in range(repeats):
        started = time.perf_counter()
        result = train_grid(data, inputs, classes, rows, config, grid=grid, progress=False)
        top1 = evaluate_grid(result, data, rows)["feat"]["top1"]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        best = seconds if best is None else min(best, seconds)
    return {"seconds": round(best, 4), "heads": len(grid), "best_train_top1": round(max(top1), 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one small case, seconds (CI)")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats, best kept (default 3, quick 2)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="where the grid trains: cpu, cuda, cuda:N (default: cpu)")
    args = parser.parse_args(argv)
    from sail_vision.devices import resolve_device

    device = str(resolve_device(args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (2 if args.quick else 3)
    # (rows, dim, classes, epochs, batch)
    cases = [(4000, 256, 10, 2, 256)] if args.quick else [
        (20000, 1024, 10, 2, 1024), (20000, 1024, 100, 2, 1024), (8192, 4096, 1000, 1, 1024)]
    full_grid = LinearConfig().grid
    single = [full_grid[len(full_grid) // 2]]
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp:
        for rows, dim, classes, epochs, batch in cases:
            data = make_features(Path(tmp), rows, dim, classes)
            case_repeats = 1 if dim * classes >= 1_000_000 else repeats  # the largest case takes minutes
            one = time_case(data, classes, single, epochs, batch, case_repeats, device)
            grid = time_case(data, classes, full_grid, epochs, batch, case_repeats, device)
            print(f"case rows={rows} dim={dim} classes={classes}: one {one['seconds']:.3f} s, "
                  f"grid {grid['seconds']:.3f} s", flush=True)
            rows_out.append({"rows": rows, "dim": dim, "classes": classes, "epochs": epochs, "batch_size": batch,
                             "one_config_s": one["seconds"], "grid_s": grid["seconds"], "grid_heads": grid["heads"],
                             "ratio": round(grid["seconds"] / one["seconds"], 2),
                             "separate_runs_estimate_s": round(one["seconds"] * grid["heads"], 3),
                             "one_config_top1": one["best_train_top1"], "grid_best_top1": grid["best_train_top1"]})
    header = f"{'rows':>6} {'dim':>5} {'C':>5} {'ep':>3} {'1 config s':>10} {'13x2 grid s':>11} {'ratio':>6} " \
             f"{'26 runs s':>9}"
    print(header)
    for r in rows_out:
        print(f"{r['rows']:>6} {r['dim']:>5} {r['classes']:>5} {r['epochs']:>3} {r['one_config_s']:>10.3f} "
              f"{r['grid_s']:>11.3f} {r['ratio']:>6.2f} {r['separate_runs_estimate_s']:>9.2f}")
    payload = {"benchmark": "probe_grid", "quick": args.quick, "target_ratio": 2.0, "cases": rows_out,
               "device": device, "gpu": torch.cuda.get_device_name(device) if device.startswith("cuda") else None,
               "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
               "machine": {"python": platform.python_version(),
                           "processor": platform.processor() or platform.machine()}}
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "" if device == "cpu" else "-" + device.replace(":", "")
    out = RESULTS / (f"bench_probe_grid{suffix}-quick.json" if args.quick else f"bench_probe_grid{suffix}.json")
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
