"""One Markdown page from probe result folders (``sail-vision report DIR... [--out REPORT.md]``).

Reads each folder's ``summary.json`` (written last by every probe run, so a folder without it holds an
interrupted run and is refused) and writes: a results table (folder, task, method, feature, layer,
protocol, the val metric with its 95 % interval, the chosen grid point), then per folder its layer sweep,
few-shot results and links to its plots, relative to the report's own location.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

from .errors import ProbeDataError
from .inputs import FeatureInput
from .results import SUMMARY_FILE

#: summary.json "files" entries that are pictures, in the order the report shows them.
PLOT_KEYS = (("plot", "selection grid"), ("layers_plot", "layer sweep"), ("few_shot_plot", "few-shot"),
             ("predictions_plot", "val predictions"), ("confusion_plot", "val confusion"))


def read_summary(folder: str | Path) -> dict:
    """A result folder's summary.json, or a one-line error saying what the folder is."""
    folder = Path(folder)
    path = folder / SUMMARY_FILE
    if not folder.is_dir():
        raise ProbeDataError(f"{folder}: no such folder (give the --out folder of a `sail-vision probe` run)")
    if not path.is_file():
        raise ProbeDataError(f"{folder}: no {SUMMARY_FILE}; not a probe result, or its run did not finish")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProbeDataError(f"{path}: malformed JSON ({exc})") from None
    if not isinstance(summary, dict) or "method" not in summary or "feature" not in summary:
        raise ProbeDataError(f"{path}: not a probe summary (no method / feature)")
    return summary


def _pct(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def _digits(value) -> str:
    """A depth metric (metres or a ratio) to 4 digits."""
    return "-" if value is None else f"{value:.4f}"


def _interval(interval) -> str:
    return "" if not interval else f" [{interval[0]:.2f}, {interval[1]:.2f}]"


def _layer(feature: str) -> str:
    layer = FeatureInput(tuple(feature.split("+"))).layer
    return "-" if layer is None else str(layer[0])


def _cell(text) -> str:
    return str(text).replace("|", "\\|")


def result_row(name: str, s: dict) -> str:
    if s.get("task") == "segmentation":
        metric = f"mIoU {_pct(s.get('mIoU'))} (mAcc {_pct(s.get('mAcc'))}, aAcc {_pct(s.get('aAcc'))})"
    elif s.get("task") == "depth":
        metric = (f"rmse {_digits(s.get('rmse'))} m (abs_rel {_digits(s.get('abs_rel'))}, "
                  f"d1 {_digits(s.get('d1'))})")
    else:
        metric = f"top-1 {_pct(s.get('top1'))}{_interval(s.get('top1_ci95'))}"
    protocol = (s.get("protocol") or {}).get("name", "-")
    return (f"| {_cell(name)} | {s.get('task', 'classification')} | {s['method']} | {_cell(s['feature'])} | "
            f"{_layer(s['feature'])} | {protocol} | {metric} | {_cell(s.get('chosen', '-'))} |")


def folder_section(name: str, folder: Path, s: dict, page_dir: Path) -> list[str]:
    lines = [f"### {name}", "", f"`{s.get('train')}` -> `{s.get('val')}`; {s.get('num_train')} training rows, "
             f"{s.get('grid_size')} grid points, selection: {s.get('selection')}."]
    if s.get("layers"):
        metric = {"segmentation": "mIoU", "depth": "rmse"}.get(s.get("task"), "top1")
        show = _digits if metric == "rmse" else _pct
        lines += ["", "| layer | feature | held-out | grid point |", "|---|---|---|---|"]
        best = (s.get("best_layer") or {}).get("feature")
        for row in s["layers"]:
            star = " (best)" if row["feature"] == best else ""
            lines.append(f"| {row['layer']}{star} | {_cell(row['feature'])} | {show(row.get(f'holdout_{metric}'))} | "
                         f"{_cell(row['grid_point'])} |")
    if s.get("few_shot"):
        lines += ["", "| shots | seeds | top-1 mean [95 % CI] |", "|---|---|---|"]
        for e in s["few_shot"]:
            lines.append(f"| {e['shots']} | {e['seeds']} | {_pct(e['top1_mean'])}{_interval(e['top1_ci95'])} |")
    if s.get("protocol"):
        missing = s["protocol"].get("not_reproduced") or []
        lines += ["", f"Protocol `{s['protocol']['name']}`; not reproduced: " + ("; ".join(missing) or "nothing")]
    files = s.get("files") or {}
    for key, title in PLOT_KEYS:
        if files.get(key) and (folder / files[key]).is_file():
            link = Path(os.path.relpath(folder / files[key], page_dir)).as_posix()
            lines += ["", f"![{name}: {title}]({link})"]
    return lines + [""]


def build_report(folders: Sequence[str | Path], page: str | Path | None = None) -> str:
    """The Markdown page for ``folders`` (links relative to ``page``'s folder, or the working directory)."""
    if not folders:
        raise ProbeDataError("give at least one probe result folder")
    page_dir = Path(page).expanduser().absolute().parent if page else Path.cwd()
    summaries = [(Path(f), read_summary(f)) for f in folders]
    names = [str(f) for f, _ in summaries]
    lines = ["# Probe results", "",
             "| result | task | method | feature | layer | protocol | val (95 % interval) | chosen |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [result_row(name, s) for name, (_, s) in zip(names, summaries)]
    lines.append("")
    for name, (folder, s) in zip(names, summaries):
        lines += folder_section(name, folder.absolute(), s, page_dir)
    return "\n".join(lines)
