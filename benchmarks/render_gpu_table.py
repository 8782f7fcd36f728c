"""Render BENCHMARKS.md's GPU tables from ``gpu_check.sh``'s JSON, with each goal met or missed.

    python benchmarks/render_gpu_table.py benchmarks/results/bench_gpu.json benchmarks/results/bench_probes_gpu.json

Goals (issue 21): >= 55 % of the dense bf16 peak for all 32 blocks at 448 px; `extract` >= 0.9x the
bare encoder; the GPU busy >= 90 % of an `extract` run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

GOALS = {"of_peak_448_all_layers": 0.55, "extract_vs_encoder": 0.9, "gpu_busy": 0.9}


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _table(rows, columns) -> list[str]:
    lines = ["| " + " | ".join(title for title, _ in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(row.get(key)) for _, key in columns) + " |" for row in rows]
    return lines


def _verdict(value, goal) -> str:
    if value is None:
        return "not measured"
    return f"{_fmt(value)} ({'met' if value >= goal else 'MISSED'}; goal >= {goal})"


def goals(gpu: dict) -> dict[str, float | None]:
    """The three measured goal figures (None where the JSON lacks them)."""
    encoder = gpu.get("encoder") or []
    full = max((r["layer"] for r in encoder), default=None)
    at_448 = [r.get("of_peak") for r in encoder if r["resolution"] == 448 and r["layer"] == full]
    extract = gpu.get("extract") or []
    ratios = [r["extract_vs_encoder"] for r in extract if r.get("extract_vs_encoder") is not None]
    busy = [r["gpu_busy"] for r in extract if r.get("gpu_busy") is not None]
    return {"of_peak_448_all_layers": at_448[0] if at_448 else None,
            "extract_vs_encoder": min(ratios) if ratios else None, "gpu_busy": min(busy) if busy else None}


def render(gpu: dict, probes: dict | None = None) -> str:
    if gpu.get("quick"):
        raise ValueError("this JSON is from a --quick run (tiny shapes): render the full run's JSON")
    machine = gpu.get("machine", {})
    lines = [f"GPU: {gpu.get('gpu') or gpu.get('device')}; dense bf16 peak {_fmt(gpu.get('peak_tflops'))} TFLOP/s; "
             f"torch {machine.get('torch', '?')}; {machine.get('date', '?')}", ""]
    lines += _table(gpu.get("encoder") or [], [("px", "resolution"), ("blocks", "layer"), ("batch", "batch"),
                                               ("dtype", "dtype"), ("images/s", "images_s"), ("TFLOP/s", "tflop_s"),
                                               ("of peak", "of_peak"), ("peak GB", "peak_gpu_gb")])
    if gpu.get("packed"):
        lines += ["", *_table(gpu["packed"], [("px", "resolution"), ("blocks", "layer"), ("batching", "batching"),
                                              ("kernel", "kernel"), ("images/s", "images_s"), ("of peak", "of_peak")])]
    lines += ["", *_table(gpu.get("extract") or [], [("px", "resolution"), ("images", "images"),
                                                     ("workers", "workers"), ("extract images/s", "extract_images_s"),
                                                     ("encoder images/s", "encoder_images_s"),
                                                     ("extract / encoder", "extract_vs_encoder"),
                                                     ("GPU busy", "gpu_busy")])]
    if probes:
        lines += ["", *_table(probes.get("rows") or [], [("probe", "probe"), ("bank rows", "bank_rows"),
                                                         ("queries/s", "queries_s"),
                                                         ("train images x epochs/s", "train_images_epochs_s"),
                                                         ("seconds", "seconds"), ("peak GB", "peak_gpu_gb")])]
    verdicts = {name: _verdict(value, GOALS[name]) for name, value in goals(gpu).items()}
    blocks = max((r["layer"] for r in gpu.get("encoder") or []), default="?")
    lines += ["", f"- all {blocks} blocks at 448 px, fraction of dense bf16 peak: {verdicts['of_peak_448_all_layers']}",
              f"- extract vs the bare encoder (lowest row): {verdicts['extract_vs_encoder']}",
              f"- GPU busy during extract (lowest row): {verdicts['gpu_busy']}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gpu_json", help="bench_gpu.py's JSON (results/bench_gpu.json)")
    parser.add_argument("probes_json", nargs="?", help="bench_probes_gpu.py's JSON (optional)")
    parser.add_argument("--out", help="also write the Markdown here (default: print only)")
    args = parser.parse_args(argv)
    try:
        gpu = json.loads(Path(args.gpu_json).read_text())
        probes = json.loads(Path(args.probes_json).read_text()) if args.probes_json else None
        text = render(gpu, probes)
    except (OSError, ValueError, KeyError) as exc:
        print(f"render_gpu_table: error: {exc}", file=sys.stderr)
        return 2
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
