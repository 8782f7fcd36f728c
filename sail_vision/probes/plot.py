"""The selection accuracy of every grid point against its swept hyper-parameter, one panel per
feature input (learning rate for linear heads, C for logreg, k for k-NN)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

#: Swept hyper-parameter (x axis, log scale) and the one drawn as separate lines, per method.
AXES = {"linear": ("lr", "weight_decay"), "logreg": ("C", None), "knn": ("k", "temperature")}


def plot_grid(records: Sequence[dict], out_file: Path, *, method: str, chosen: str | None = None) -> Path:
    """Draw ``records`` (the grid.jsonl objects) into a PNG and return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x_key, line_key = AXES[method]
    features = list(dict.fromkeys(r["feature"] for r in records))
    columns = min(3, len(features))
    rows = -(-len(features) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(4.5 * columns, 3.4 * rows), squeeze=False)
    for axis, feature in zip(axes.flat, features):
        lines = defaultdict(list)
        for record in records:
            if record["feature"] == feature:
                lines[record.get(line_key) if line_key else None].append(record)
        for value, points in lines.items():
            points = sorted(points, key=lambda r: r[x_key])
            score = [r["holdout_top1"] if r.get("holdout_top1") is not None else r.get("val_top1") for r in points]
            label = f"{line_key}={value:g}" if line_key else None
            axis.plot([r[x_key] for r in points], score, marker="o", label=label)
            for r, s in zip(points, score):
                if r["name"] == chosen:
                    axis.plot([r[x_key]], [s], marker="*", markersize=16, color="black", linestyle="none")
        axis.set_xscale("log")
        axis.set_xlabel(x_key)
        axis.set_ylabel("top-1 on the selection split (%)")
        axis.set_title(feature if len(feature) <= 48 else feature[:45] + "...", fontsize=9)
        axis.grid(True, alpha=0.3)
        if line_key and len(lines) > 1:
            axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(features):]:
        axis.set_visible(False)
    figure.suptitle(f"{method} probe: accuracy against {x_key} (star: chosen)")
    figure.tight_layout()
    out_file = Path(out_file)
    figure.savefig(out_file, dpi=100)
    plt.close(figure)
    return out_file
