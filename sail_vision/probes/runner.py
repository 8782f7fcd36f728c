"""``run_probe``: validate, sweep a grid, select on a held-out split of train, refit, evaluate once on val,
and write the results folder."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from . import knn as knn_mod
from . import linear as linear_mod
from . import logreg as logreg_mod
from .data import FeatureInput, ProbeData, ProbeDataError, input_stats, split_holdout, validate_train_val
from .results import (GRID_FILE, HEAD_JSON_FILE, MAX_SAVED_BANK_BYTES, PLOT_FILE, PREDICTIONS_FILE, SUMMARY_FILE,
                      LoadedProbe, format_table, save_head, write_json, write_json_lines)

METHODS = ("linear", "logreg", "knn")
from .defaults import DEFAULT_HOLDOUT_FRACTION  # noqa: E402


@dataclass
class ProbeResult:
    summary: dict
    records: list[dict]
    probe: LoadedProbe
    out: Path | None
    table: str = ""
    val_predictions: np.ndarray | None = field(default=None, repr=False)


def _best(records: list[dict]) -> dict:
    """Highest selection top-1, then top-5; the first such point in grid order."""
    return max(records, key=lambda r: (r["holdout_top1"], r["holdout_top5"]))


def _check_out(out: Path | None, overwrite: bool) -> None:
    """Refuse, before any work, an --out that is a file or already holds a result (unless overwrite)."""
    if out is None:
        return
    if out.exists() and not out.is_dir():
        raise ProbeDataError(f"--out {out}: exists and is not a folder")
    if (out / SUMMARY_FILE).exists() and not overwrite:
        raise ProbeDataError(f"--out {out}: already holds a probe result ({SUMMARY_FILE}); pass --overwrite to "
                             f"replace it or choose another folder")


def run_probe(train: ProbeData, val: ProbeData | None, inputs: Sequence[FeatureInput], out: str | Path | None, *,
              method: str = "linear", linear: linear_mod.LinearConfig | None = None,
              cs: Sequence[float] = logreg_mod.DEFAULT_CS, max_iter: int = logreg_mod.DEFAULT_MAX_ITER,
              ks: Sequence[int] = knn_mod.DEFAULT_KS, temperature: float = knn_mod.DEFAULT_TEMPERATURE,
              standardize: bool | None = None, holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION, seed: int = 0,
              refit: bool = True, overwrite: bool = False, progress: bool = True, verbose: bool = True,
              bank_reference: dict | None = None) -> ProbeResult:
    """Probe ``inputs`` of ``train``; choose hyper-parameters on a seeded held-out ``holdout_fraction`` of
    train (skipped when the grid has a single point), refit the chosen point on all of train (``refit``),
    evaluate it once on ``val`` and, when ``out`` is given, write the results there."""
    started = time.monotonic()
    if method not in METHODS:
        raise ProbeDataError(f"--method {method!r}: choose one of {', '.join(METHODS)}")
    inputs = list(inputs)
    out = None if out is None else Path(out).expanduser()
    config = linear or linear_mod.LinearConfig()
    standardize = (method == "linear") if standardize is None else bool(standardize)
    standardize = standardize and method != "knn"  # cosine k-NN compares directions as they are
    config.standardize = standardize
    config.seed = seed
    if method == "linear":
        config.check()
    elif method == "logreg":
        logreg_mod.check_cs(cs)
    _check_out(out, overwrite)
    num_classes = validate_train_val(train, val, inputs, config.chunk_rows)
    grid_size = len(inputs) * {"linear": len(config.grid), "logreg": len(cs), "knn": len(ks)}[method]
    all_rows = np.arange(train.num_rows)
    if grid_size > 1:
        fit_rows, held_rows = split_holdout(train.labels, holdout_fraction, seed)
    else:
        fit_rows, held_rows = all_rows, None
    sweep = {"linear": _sweep_linear, "logreg": _sweep_logreg, "knn": _sweep_knn}[method]
    records, final = sweep(train, inputs, num_classes, fit_rows, held_rows, all_rows, refit=refit, config=config,
                           cs=cs, max_iter=max_iter, ks=ks, temperature=temperature, seed=seed, progress=progress)
    chosen = _best(records) if held_rows is not None else records[0]
    meta, tensors, bank = final(chosen)
    feature_input = FeatureInput(tuple(chosen["parts"]))
    meta.update({"method": method, "feature": feature_input.name, "parts": list(feature_input.parts),
                 "part_dims": [int(train.features[p].shape[1]) for p in feature_input.parts],
                 "dim": train.dim(feature_input), "num_classes": num_classes, "classes": train.classes,
                 "standardized": standardize, "grid_point": chosen["name"], "train": train.source,
                 "refit_on_all_train": bool(refit or held_rows is None)})
    if method == "knn":
        meta["bank"] = _knn_bank_meta(train, feature_input, bank_reference, tensors)
    probe = LoadedProbe(meta, {k: _tensor(v) for k, v in tensors.items()},
                        bank=train if method == "knn" else None)
    hyper = {key: chosen[key] for key in _HYPER_KEYS[method]}
    meta["hyperparameters"] = hyper if method != "knn" else {**hyper, "temperature": temperature}
    top1 = top5 = predictions = None
    if val is not None:
        top1, top5, predictions = probe.evaluate(val, config.chunk_rows)
    summary = {"method": method, "feature": feature_input.name, "top1": top1, "top5": top5, **hyper,
               "hyperparameters": hyper, "holdout_top1": chosen.get("holdout_top1"),
               "holdout_top5": chosen.get("holdout_top5"), "chosen": chosen["name"],
               "selection": "holdout" if held_rows is not None else "single grid point (no selection)",
               "holdout_fraction": holdout_fraction if held_rows is not None else 0.0, "seed": seed,
               "refit_on_all_train": meta["refit_on_all_train"], "standardized": standardize,
               "num_train": int(train.num_rows), "num_fit": int(fit_rows.size),
               "num_holdout": int(0 if held_rows is None else held_rows.size),
               "num_val": None if val is None else int(val.num_rows), "num_classes": num_classes,
               "grid_size": grid_size, "train": train.source, "val": None if val is None else val.source}
    if method == "linear":
        summary.update({"optimizer": config.optimizer, "epochs": config.epochs, "batch_size": config.batch_size})
    if method == "knn":
        summary["temperature"] = temperature
    summary["seconds"] = round(time.monotonic() - started, 3)
    table = format_table(records, chosen["name"], summary)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json_lines(out / GRID_FILE, records)
        save_head(out, meta, tensors)
        if predictions is not None:
            np.save(out / PREDICTIONS_FILE, predictions)
        from .plot import plot_grid

        plot_grid(records, out / PLOT_FILE, method=method, chosen=chosen["name"])
        summary["files"] = {"grid": GRID_FILE, "head": HEAD_JSON_FILE, "plot": PLOT_FILE,
                            "val_predictions": PREDICTIONS_FILE if predictions is not None else None}
        write_json(out / SUMMARY_FILE, summary)
    if verbose:
        print(table)
    return ProbeResult(summary, records, probe, out, table, predictions)


_HYPER_KEYS = {"linear": ("lr", "weight_decay"), "logreg": ("C",), "knn": ("k",)}


def _tensor(array):
    import torch

    return torch.from_numpy(np.ascontiguousarray(array))


def _record(name: str, method: str, feature_input: FeatureInput, held, accuracy, **hyper) -> dict:
    return {"name": name, "method": method, "feature": feature_input.name, "parts": list(feature_input.parts),
            **hyper, "holdout_top1": None if held is None else accuracy[0],
            "holdout_top5": None if held is None else accuracy[1]}


def _sweep_linear(train, inputs, num_classes, fit_rows, held_rows, all_rows, *, refit, config, progress, **_):
    grid = linear_mod.train_grid(train, inputs, num_classes, fit_rows, config, progress=progress)
    accuracy = linear_mod.evaluate_grid(grid, train, held_rows, config.chunk_rows) if held_rows is not None else {}
    records = []
    for feature_input in inputs:
        for index, (lr, wd) in enumerate(config.grid):
            acc = (accuracy[feature_input.name][0][index], accuracy[feature_input.name][1][index]) if accuracy else None
            records.append(_record(linear_mod.grid_point_name(feature_input.name, lr, wd), "linear", feature_input,
                                   held_rows, acc, lr=lr, weight_decay=wd, head_index=index))

    def final(chosen):
        feature_input = FeatureInput(tuple(chosen["parts"]))
        if refit and held_rows is not None:
            again = linear_mod.train_grid(train, [feature_input], num_classes, all_rows, config,
                                          grid=[(chosen["lr"], chosen["weight_decay"])], progress=progress)
            tensors = again.stacks[feature_input.name].head(0)
        else:
            tensors = grid.stacks[feature_input.name].head(chosen["head_index"])
        return {"optimizer": config.optimizer, "epochs": config.epochs, "batch_size": config.batch_size}, tensors, None

    return records, final


def _standardizer(train: ProbeData, feature_input: FeatureInput, rows: np.ndarray, config) -> dict:
    if not config.standardize:
        return {}
    mean, std = input_stats(train, feature_input, rows, config.chunk_rows)
    return {"mean": mean, "std": std}


def _apply(x: np.ndarray, stats: dict) -> np.ndarray:
    return (x - stats["mean"]) / stats["std"] if stats else x


def _sweep_logreg(train, inputs, num_classes, fit_rows, held_rows, all_rows, *, refit, config, cs, max_iter, seed,
                  progress, **_):
    from tqdm.auto import tqdm

    import torch

    from .metrics import accuracy_percent, topk_correct

    records = []
    with tqdm(total=len(inputs) * len(cs), desc="logreg sweep", disable=not progress, leave=False) as bar:
        for feature_input in inputs:
            stats = _standardizer(train, feature_input, fit_rows, config)
            x_fit = _apply(train.gather(feature_input, fit_rows), stats)
            x_held = None if held_rows is None else _apply(train.gather(feature_input, held_rows), stats)
            for c in cs:
                accuracy = None
                if held_rows is not None:
                    model = logreg_mod.fit_logreg(x_fit, train.labels[fit_rows], c, max_iter=max_iter, seed=seed)
                    head = logreg_mod.head_tensors(model, num_classes)
                    scores = torch.from_numpy(x_held @ head["weight"].T + head["bias"])
                    hits = topk_correct(scores, torch.from_numpy(train.labels[held_rows]))
                    accuracy = (accuracy_percent(hits[1], held_rows.size), accuracy_percent(hits[5], held_rows.size))
                records.append(_record(logreg_mod.grid_point_name(feature_input.name, c), "logreg", feature_input,
                                       held_rows, accuracy, C=float(c)))
                bar.update(1)

    def final(chosen):
        feature_input = FeatureInput(tuple(chosen["parts"]))
        rows = all_rows if (refit or held_rows is None) else fit_rows
        stats = _standardizer(train, feature_input, rows, config)
        x = _apply(train.gather(feature_input, rows), stats)
        model = logreg_mod.fit_logreg(x, train.labels[rows], chosen["C"], max_iter=max_iter, seed=seed)
        tensors = {**logreg_mod.head_tensors(model, num_classes), **stats}
        return {"max_iter": max_iter, "converged": bool(model.converged_)}, tensors, None

    return records, final


def _sweep_knn(train, inputs, num_classes, fit_rows, held_rows, all_rows, *, refit, config, ks, temperature,
               progress, **_):
    records = []
    for feature_input in inputs:
        accuracy = {}
        if held_rows is not None:
            accuracy = knn_mod.evaluate_knn(train, fit_rows, train, held_rows, feature_input, ks, num_classes,
                                            temperature, config.chunk_rows)
        for k in ks:
            records.append(_record(knn_mod.grid_point_name(feature_input.name, int(k), temperature), "knn",
                                   feature_input, held_rows, accuracy.get(int(k)), k=int(k),
                                   temperature=float(temperature)))

    def final(chosen):
        feature_input = FeatureInput(tuple(chosen["parts"]))
        tensors = {}
        bytes_needed = train.num_rows * train.dim(feature_input) * 4
        if bytes_needed <= MAX_SAVED_BANK_BYTES:
            tensors = {"bank": train.gather(feature_input), "bank_labels": train.labels.astype(np.int64)}
        return {"bank_rows": int(train.num_rows)}, tensors, None

    return records, final


def _knn_bank_meta(train: ProbeData, feature_input: FeatureInput, reference: dict | None, tensors: dict) -> dict:
    if "bank" in tensors:
        return {"saved": True}
    if reference:
        return {"saved": False, **reference}
    raise ProbeDataError(f"the k-NN bank of {feature_input.name!r} is too large to save and was not read from a "
                         f"feature folder; probe from a `sail-vision extract` folder so the head can refer to it")
