"""Pictures of a probe run: the selection metric of every grid point against its swept hyper-parameter
(``accuracy.png``, one panel per feature input), and the best held-out metric of each layer against
layer depth (``layers.png``, one line per pool)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, out_file: Path) -> Path:
    out_file = Path(out_file)
    figure.savefig(out_file, dpi=100)
    pyplot().close(figure)
    return out_file


def plot_grid(records: Sequence[dict], out_file: Path, *, method: str, hyperparameters: Sequence[str],
              chosen: str | None = None, metric: str = "top1") -> Path:
    """Draw ``records`` (the grid.jsonl objects) into a PNG and return its path: ``metric`` against the
    first hyper-parameter (log scale when all positive), one line per value of the second (if any)."""
    plt = pyplot()
    x_key = hyperparameters[0]
    line_key = hyperparameters[1] if len(hyperparameters) > 1 else None
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
            score = [r.get(f"holdout_{metric}") for r in points]
            label = f"{line_key}={value:g}" if line_key else None
            axis.plot([r[x_key] for r in points], score, marker="o", label=label)
            for r, s in zip(points, score):
                if r["name"] == chosen and s is not None:
                    axis.plot([r[x_key]], [s], marker="*", markersize=16, color="black", linestyle="none")
        if all(r[x_key] > 0 for r in records if r["feature"] == feature):
            axis.set_xscale("log")
        axis.set_xlabel(x_key)
        axis.set_ylabel(f"{metric} on the selection split (%)")
        axis.set_title(feature if len(feature) <= 48 else feature[:45] + "...", fontsize=9)
        axis.grid(True, alpha=0.3)
        if line_key and len(lines) > 1:
            axis.legend(fontsize=7)
    for axis in list(axes.flat)[len(features):]:
        axis.set_visible(False)
    figure.suptitle(f"{method} probe: {metric} against {x_key} (star: chosen)")
    figure.tight_layout()
    return save_figure(figure, out_file)


def plot_layers(rows: Sequence[dict], out_file: Path, *, metric: str = "top1", title: str = "probe") -> Path:
    """Draw a layer summary (``results.layer_summary`` rows) as ``metric`` against layer, one line per
    pool, the best layer starred; returns the PNG's path."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 3.8))
    by_pool = defaultdict(list)
    for row in rows:
        by_pool[row["pool"]].append(row)
    from .results import best_layer

    best = best_layer(rows, (metric,))
    for pool, points in sorted(by_pool.items()):
        points = sorted(points, key=lambda r: r["layer"])
        axis.plot([r["layer"] for r in points], [r[f"holdout_{metric}"] for r in points], marker="o", label=pool)
    axis.plot([best["layer"]], [best[f"holdout_{metric}"]], marker="*", markersize=16, color="black",
              linestyle="none", label=f"best: {best['feature']}")
    axis.set_xlabel("layer (0 = input embedding)")
    axis.set_ylabel(f"held-out {metric} (%), best hyper-parameters")
    axis.set_title(f"{title}: {metric} against layer depth")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return save_figure(figure, out_file)
