"""``run_probe``: validate, sweep a grid, select on a held-out split of train, refit, evaluate once on val,
and write the results folder. The steps are the same for every :class:`~.methods.ProbeMethod`."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from .data import ProbeData, split_holdout
from .defaults import (DEFAULT_CHUNK_ROWS, DEFAULT_CS, DEFAULT_HOLDOUT_FRACTION, DEFAULT_KS, DEFAULT_MAX_ITER,
                       DEFAULT_TEMPERATURE)
from .errors import ProbeDataError
from .inputs import FeatureInput
from .methods import ProbeMethod, best_record, method_class
from .results import (FEW_SHOT_PLOT_FILE, GRID_FILE, HEAD_JSON_FILE, LAYERS_PLOT_FILE, PLOT_FILE, PREDICTIONS_FILE, RUN_FILES,
                      SUMMARY_FILE, LoadedProbe, best_layer, claim_output, format_layer_table, format_table,
                      layer_summary, save_head, save_npy, write_json, write_json_lines)


@dataclass
class ProbeResult:
    summary: dict
    records: list[dict]
    probe: LoadedProbe
    out: Path | None
    table: str = ""
    val_predictions: np.ndarray | None = field(default=None, repr=False)
    layers: list[dict] = field(default_factory=list)


def build_method(method: str, *, linear=None, attentive=None, cs: Sequence[float] = DEFAULT_CS, max_iter: int = DEFAULT_MAX_ITER,
                 ks: Sequence = DEFAULT_KS, temperature: float = DEFAULT_TEMPERATURE, standardize: bool | None = None,
                 seed: int = 0, device: str | None = None, chunk_rows: int | None = None) -> ProbeMethod:
    """The ProbeMethod called ``method`` with the given settings. ``standardize`` defaults to on for
    linear and off for logreg (k-NN compares directions and refuses it); ``device`` and ``chunk_rows``,
    when given, replace those of ``linear`` (a :class:`~.linear.LinearConfig`)."""
    from dataclasses import replace

    from .linear import LinearConfig

    cls = method_class(method)
    if cls.name == "knn" and standardize:
        raise ProbeDataError("--standardize does not apply to knn: cosine similarity compares the features' "
                             "directions as they are")
    if cls.name == "attentive":
        from .attentive import AttentiveConfig

        if standardize:
            raise ProbeDataError("--standardize does not apply to attentive: its head normalises the tokens with "
                                 "its own BatchNorm")
        config = replace(attentive or AttentiveConfig(), seed=seed)
        if device is not None:
            config.device = str(device)
        if chunk_rows is not None:
            config.chunk_rows = int(chunk_rows)
        return cls(config)
    if cls.name == "linear":
        config = replace(linear or LinearConfig(), seed=seed)
        config.standardize = config.standardize if standardize is None else bool(standardize)
        if device is not None:
            config.device = str(device)
        if chunk_rows is not None:
            config.chunk_rows = int(chunk_rows)
        return cls(config)
    chunk_rows = DEFAULT_CHUNK_ROWS if chunk_rows is None else int(chunk_rows)
    if chunk_rows < 1:
        raise ProbeDataError(f"--chunk-rows must be >= 1, got {chunk_rows}")
    if cls.name == "logreg":
        return cls(cs, max_iter=max_iter, standardize=bool(standardize), seed=seed, chunk_rows=chunk_rows)
    return cls(ks, temperature, chunk_rows=chunk_rows, device=str(device or "cpu"))


def run_probe(train: ProbeData, val: ProbeData | None, inputs: Sequence[FeatureInput], out: str | Path | None, *,
              method: str | ProbeMethod = "linear", holdout_fraction: float = DEFAULT_HOLDOUT_FRACTION,
              seed: int = 0, refit: bool = True, overwrite: bool = False, progress: bool = True,
              verbose: bool = True, shots: Sequence[int] = (), shot_seeds: int = 5, protocol: dict | None = None,
              **settings) -> ProbeResult:
    """Probe ``inputs`` of ``train``; choose hyper-parameters on a seeded held-out ``holdout_fraction`` of
    train (skipped when the grid has a single point), refit the chosen point on all of train (``refit``),
    evaluate it once on ``val`` and, when ``out`` is given, write the results there.

    ``method`` is a :class:`~.methods.ProbeMethod` or a name built with :func:`build_method` from
    ``settings`` (``linear=LinearConfig(...)``, ``attentive=AttentiveConfig(...)``, ``cs``, ``max_iter``, ``ks``, ``temperature``,
    ``standardize``, ``device``, ``chunk_rows``).

    ``shots`` (with val): also train the chosen grid point on ``shot_seeds`` seeded subsets of K rows per
    class for each K and record the ``few_shot`` list (see :mod:`.fewshot`); a full-data top-1 always gets
    its bootstrap interval over val (``top1_ci95``). ``protocol``: the named protocol's record
    (:meth:`~.protocols.Protocol.record`), written to the summary as it is.
    """
    started = time.monotonic()
    if isinstance(method, str):
        method = build_method(method, seed=seed, **settings)
    elif settings:
        raise ProbeDataError(f"settings {sorted(settings)} apply only when the method is given by name")
    method.check()
    inputs = list(inputs)
    if not inputs:
        raise ProbeDataError("no feature inputs to probe")
    if not 0 <= int(seed) < 2 ** 32:
        raise ProbeDataError(f"--seed must be between 0 and 2**32 - 1, got {seed}")
    if shots:
        from .fewshot import check_shots

        shots = check_shots(shots, shot_seeds)
        if val is None:
            raise ProbeDataError("--shots needs val features to score the few-shot heads on")
        if "top1" not in method.metrics:
            raise ProbeDataError(f"--shots applies to classification probes, not {method.name}")
    grid_size = method.grid_size(inputs)
    if grid_size > 1 and not 0 < holdout_fraction < 1:
        raise ProbeDataError(f"--holdout-fraction must be between 0 and 1, got {holdout_fraction}")
    out = None if out is None else Path(out).expanduser()
    if out is None:
        return _run(train, val, inputs, None, method, grid_size, holdout_fraction, seed, refit, progress, verbose,
                    started, shots, shot_seeds, protocol)
    with claim_output(out, result_file=SUMMARY_FILE, own_files=getattr(method, "run_files", RUN_FILES),
                      overwrite=overwrite, what=getattr(method, "result_name", "probe result")) as folder:
        return _run(train, val, inputs, folder, method, grid_size, holdout_fraction, seed, refit, progress, verbose,
                    started, shots, shot_seeds, protocol)


def _run(train, val, inputs, out, method: ProbeMethod, grid_size, holdout_fraction, seed, refit, progress, verbose,
         started, shots=(), shot_seeds=5, protocol=None) -> ProbeResult:
    num_classes, val = method.validate(train, val, inputs)
    all_rows = np.arange(train.num_rows)
    split = getattr(method, "holdout_split", None)  # default: stratified by label
    if grid_size > 1:
        fit_rows, held_rows = (split(train, holdout_fraction, seed) if split else
                               split_holdout(train.labels, holdout_fraction, seed))
    else:
        fit_rows, held_rows = all_rows, None
    records = method.fit_grid(train, inputs, num_classes, fit_rows, held_rows, progress=progress)
    chosen = best_record(records, method.metrics) if held_rows is not None else records[0]
    refit_all = bool(refit or held_rows is None)
    head = method.refit(train, chosen, num_classes, all_rows if refit_all else fit_rows, progress=progress)
    feature_input = head.feature_input
    hyper = {key: chosen[key] for key in method.hyperparameters}
    settings = method.settings()
    trained_rows = all_rows if refit_all else fit_rows
    if hasattr(method, "head_meta"):
        meta = {**method.head_meta(train, head, chosen, trained_rows, num_classes), "hyperparameters": hyper,
                "refit_on_all_train": refit_all}
    else:
        meta = _classification_meta(method, train, head, chosen, hyper, settings, trained_rows, num_classes,
                                    refit_all)
    probe = LoadedProbe(meta, head)
    metrics = method.metrics
    scores = {m: None for m in metrics}
    predictions = None
    if val is not None:
        measured, predictions = method.evaluate(probe, val)
        scores.update(measured)
    if predictions is not None and "top1" in metrics:
        from .fewshot import BOOTSTRAP_RESAMPLES, bootstrap_ci

        scores["top1_ci95"] = bootstrap_ci(predictions == val.labels, seed)
        scores["bootstrap"] = {"resamples": BOOTSTRAP_RESAMPLES, "seed": seed, "level": 0.95, "over": "val rows"}
    few_shot = _few_shot(method, train, val, chosen, meta, num_classes, shots, shot_seeds, seed) if shots else None
    layers = layer_summary(records, metrics)
    top_layer = best_layer(layers, metrics)
    summary = {"method": method.name, "feature": feature_input.name, **scores, **hyper, "hyperparameters": hyper,
               **{f"holdout_{m}": chosen.get(f"holdout_{m}") for m in metrics}, "chosen": chosen["name"],
               "selection": "holdout" if held_rows is not None else "single grid point (no selection)",
               "holdout_fraction": holdout_fraction if held_rows is not None else 0.0, "seed": seed,
               "refit_on_all_train": refit_all, "standardized": meta["standardized"],
               "num_train": int(train.num_rows), "num_fit": int(fit_rows.size),
               "num_holdout": int(0 if held_rows is None else held_rows.size),
               "num_val": None if val is None else int(val.num_rows), "num_classes": num_classes,
               "classes": train.classes, "grid_size": grid_size, "train": train.source,
               "val": None if val is None else val.source, **settings}
    if hasattr(method, "summary_extras"):
        summary.update(method.summary_extras(train, head))
    if protocol is not None:
        summary["protocol"] = protocol
    if few_shot is not None:
        summary["few_shot"] = few_shot
        summary["few_shot_protocol"] = ("K rows of every class drawn with numpy default_rng([seed, K, s]) for s < "
                                        "seeds; each subset trained with the full-data run's chosen grid point; "
                                        "top1_ci95: Student-t 95 % interval over seeds")
    if layers:
        summary["layers"] = layers
        summary["best_layer"] = top_layer
    summary["seconds"] = round(time.monotonic() - started, 3)
    table = format_table(records, chosen["name"], summary, metrics)
    if layers:
        table += "\n" + format_layer_table(layers, metrics)
    if out is not None:
        from .plot import plot_grid, plot_layers

        write_json_lines(out / GRID_FILE, records)
        save_head(out, meta, head.tensors())
        if predictions is not None:
            save_npy(out / PREDICTIONS_FILE, predictions)
        plot_grid(records, out / PLOT_FILE, method=method.name, hyperparameters=method.hyperparameters,
                  chosen=chosen["name"], metric=metrics[0])
        files = {"grid": GRID_FILE, "head": HEAD_JSON_FILE, "plot": PLOT_FILE,
                 "val_predictions": PREDICTIONS_FILE if predictions is not None else None}
        if layers:
            plot_layers(layers, out / LAYERS_PLOT_FILE, metric=metrics[0], title=f"{method.name} probe")
            files["layers_plot"] = LAYERS_PLOT_FILE
        if hasattr(method, "write_outputs"):
            files.update(method.write_outputs(out, train, head, summary))
        if few_shot:
            from .fewshot import plot_few_shot

            plot_few_shot(few_shot, out / FEW_SHOT_PLOT_FILE, full_top1=summary.get("top1"),
                          full_ci=summary.get("top1_ci95"), title=f"{method.name} probe on {feature_input.name}")
            files["few_shot_plot"] = FEW_SHOT_PLOT_FILE
        summary["files"] = files
        write_json(out / SUMMARY_FILE, summary)
        meta["folder"] = str(out)
    if verbose:
        print(table)
    return ProbeResult(summary, records, probe, out, table, predictions, layers)


def _few_shot(method, train, val, chosen, meta, num_classes, shots, seeds, seed) -> list[dict]:
    """The chosen grid point trained on ``seeds`` subsets of K rows per class for each K, scored on val."""
    from .fewshot import few_shot_entry, sample_shots

    entries = []
    for shots_k in shots:
        top1 = []
        for index in range(seeds):
            rows = sample_shots(train.labels, shots_k, seed, index, train.class_name)
            head = method.refit(train, chosen, num_classes, rows, progress=False)
            subset_meta = {**meta, "trained_labels": np.unique(train.labels[rows]).tolist()}
            measured, _ = method.evaluate(LoadedProbe(subset_meta, head), val)
            top1.append(measured["top1"])
        entries.append(few_shot_entry(shots_k, seeds, top1))
    return entries


def _classification_meta(method, train, head, chosen, hyper, settings, trained_rows, num_classes, refit_all) -> dict:
    """head.json fields of a classification head (one label per row, features of a ProbeData)."""
    feature_input = head.feature_input
    return {**head.meta(), "method": method.name, "feature": feature_input.name, "parts": list(feature_input.parts),
             "part_dims": train.part_dims(feature_input), "dim": train.dim(feature_input), "num_classes": num_classes,
             "classes": train.classes, "trained_labels": np.unique(train.labels[trained_rows]).tolist(),
             "standardized": bool(getattr(head, "standardizer", None) is not None),
             "hyperparameters": {**hyper, **({"temperature": settings["temperature"]} if method.name == "knn" else {})},
             "grid_point": chosen["name"], "train": train.source, "refit_on_all_train": refit_all,
             "provenance": train.input_provenance(feature_input)}
