"""`sail-vision probe` end to end: feature folders, plain arrays, layer sweeps, --predict, and one-line errors."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from sail_vision.cli import build_parser, main
from sail_vision.feature_store import write_feature_dir

DOCS = Path(__file__).resolve().parents[2] / "docs" / "probes.md"


def _one_line_error(capsys, code, *needles):
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err
    return err


def test_cli_on_feature_folders_with_concat_and_predict(digits_dirs, tmp_path, capsys):
    train_dir, val_dir = digits_dirs
    out = tmp_path / "probe"
    code = main(["probe", "--train", str(train_dir), "--val", str(val_dir), "--features", "layer-4_mean",
                 "--concat-last", "2", "--lrs", "0.01,0.1", "--weight-decays", "0", "--epochs", "5",
                 "--out", str(out), "--quiet"])
    assert code == 0
    lines = [json.loads(line) for line in (out / "grid.jsonl").read_text().splitlines()]
    assert {line["feature"] for line in lines} == {"layer-4_mean", "layer-3_end+layer-4_end+layer-4_mean"}
    summary = json.loads((out / "summary.json").read_text())
    assert "val top1" in capsys.readouterr().out
    head = json.loads((out / "head.json").read_text())
    assert head["classes"][:2] == ["zero", "one"] and head["provenance"]["checkpoint"]["weights_digest"]
    pred = tmp_path / "pred"
    assert main(["probe", "--predict", str(out), "--val", str(val_dir), "--out", str(pred)]) == 0
    assert f"top1 {summary['top1']:.2f}" in capsys.readouterr().out
    predictions = np.load(pred / "predictions.npy")
    labels = np.load(val_dir / "labels.npy")
    assert predictions.shape == (540,)
    assert 100 * (predictions == labels).mean() == pytest.approx(summary["top1"])
    with open(pred / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 540 and rows[7]["path"] == "/data/val/digit_val_7.png" and rows[7]["status"] == "ok"
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    assert [r["class_1"] for r in rows] == [names[p] for p in predictions]
    assert rows[0]["label"] == names[labels[0]] and 0 < float(rows[0]["prob_1"]) <= 1
    assert main(["probe", "--predict", str(out), "--val", str(val_dir), "--out", str(pred)]) == 2
    _one_line_error(capsys, 2, "already holds a prediction result", "--overwrite")


def test_cli_on_plain_arrays(digits_split, tmp_path):
    x_train, x_test, y_train, y_test = digits_split
    for name, value in {"xtr": x_train, "ytr": y_train, "xte": x_test, "yte": y_test}.items():
        np.save(tmp_path / f"{name}.npy", value)
    code = main(["probe", "--train-features", str(tmp_path / "xtr.npy"), "--train-labels", str(tmp_path / "ytr.npy"),
                 "--val-features", str(tmp_path / "xte.npy"), "--val-labels", str(tmp_path / "yte.npy"),
                 "--method", "logreg", "--Cs", "1", "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["feature"] == "xtr" and summary["C"] == 1.0 and summary["top1"] > 90
    assert main(["probe", "--predict", str(tmp_path / "out"), "--val-features", str(tmp_path / "xte.npy"),
                 "--out", str(tmp_path / "pred")]) == 0
    assert (np.load(tmp_path / "pred" / "predictions.npy") == np.load(tmp_path / "out" / "val_predictions.npy")).all()


def test_layer_sweep_by_glob_and_all_layers(tmp_path, capsys):
    """Layer k's features carry k informative dimensions: deeper layers are better, the best layer is the last."""
    rng = np.random.default_rng(0)
    n = 400
    labels = rng.integers(0, 4, n)
    centres = rng.normal(size=(4, 8)) * 3
    features = {}
    for layer in (1, 2, 4, 8):
        x = rng.normal(size=(n, 8))
        x[:, :layer] += centres[labels][:, :layer]
        features[f"layer-{layer}_mean"] = x.astype(np.float32)
        features[f"layer-{layer}_end"] = rng.normal(size=(n, 8)).astype(np.float32)
    for split, rows in (("train", slice(0, 300)), ("val", slice(300, n))):
        write_feature_dir(tmp_path / split, {k: v[rows] for k, v in features.items()}, labels=labels[rows],
                          classes=["a", "b", "c", "d"])
    common = ["probe", "--train", str(tmp_path / "train"), "--val", str(tmp_path / "val"), "--lrs", "0.01,0.1",
              "--weight-decays", "0", "--epochs", "5", "--batch-size", "32"]
    assert main([*common, "--features", "layer-*_mean", "--out", str(tmp_path / "glob")]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "glob" / "summary.json").read_text())
    assert [row["layer"] for row in summary["layers"]] == [1, 2, 4, 8]
    assert summary["best_layer"]["feature"] == "layer-8_mean"
    assert summary["layers"][0]["holdout_top1"] < summary["layers"][-1]["holdout_top1"]
    assert "best layer: layer-8_mean" in printed and re.search(r"\* +8  layer-8_mean", printed)
    assert (tmp_path / "glob" / "layers.png").stat().st_size > 1000
    assert main([*common, "--all-layers", "--out", str(tmp_path / "all")]) == 0
    again = json.loads((tmp_path / "all" / "summary.json").read_text())
    assert again["layers"] == summary["layers"]  # --all-layers == --features 'layer-*_mean'
    assert main([*common, "--all-layers", "end", "--features", "layer-8_mean", "--out", str(tmp_path / "end")]) == 0
    ends = json.loads((tmp_path / "end" / "summary.json").read_text())
    assert [(r["pool"], r["layer"]) for r in ends["layers"]] == [("end", 1), ("end", 2), ("end", 4), ("end", 8),
                                                                 ("mean", 8)]
    assert ends["best_layer"]["feature"] == "layer-8_mean"  # the end features are noise
    assert main([*common, "--features", "layer-8_mean", "--out", str(tmp_path / "one")]) == 0
    assert not (tmp_path / "one" / "layers.png").exists()


def _arrays(tmp_path, case):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    y = np.arange(30) % 3
    y_val = y.copy()
    extra = []
    if case == "length":
        y = y[:-2]
    elif case == "nan":
        x[2, 1] = np.nan
    elif case == "single":
        y = np.zeros(30, int)
    elif case == "unseen":
        y_val = y_val + 1
    elif case == "ks0":
        extra = ["--method", "knn", "--ks", "0"]
    elif case == "empty-grid":
        extra = ["--lrs", ""]
    elif case == "negative-lr":
        extra = ["--lrs", "0.1,-0.01"]
    elif case == "over-classes":
        (tmp_path / "classes.txt").write_text("a\nb\n")
        extra = ["--classes", str(tmp_path / "classes.txt")]
    elif case == "few-rows":
        x, y, y_val = x[:4], y[:4] % 2, y_val[:4] % 2
    elif case == "ids":
        y = np.where(y == 2, 10 ** 9, y)
    elif case == "seed":
        extra = ["--seed", "-1"]
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "yv.npy", y_val)
    train = ["--train-features", str(tmp_path / "x.npy")]
    if case != "nolabels":
        train += ["--train-labels", str(tmp_path / "y.npy")]
    return [*train, "--val-features", str(tmp_path / "x.npy"), "--val-labels", str(tmp_path / "yv.npy"), *extra]


@pytest.mark.parametrize("case, message", [
    ("length", "labels for"),
    ("nan", "NaN/Inf values, first at row 2"),
    ("single", "at least two classes"),
    ("unseen", "labels 3 never occur in train"),
    ("nolabels", "--train-labels"),
    ("ks0", "--ks must be whole numbers >= 1"),
    ("empty-grid", "--lrs: the grid is empty"),
    ("negative-lr", "--lrs must be positive"),
    ("over-classes", "but only 2 class names"),
    ("few-rows", "of 4 training rows holds out 0"),
    ("ids", "labels go up to 1000000000"),
    ("seed", "--seed must be between 0 and 2**32 - 1"),
])
def test_bad_input_is_a_one_line_error(case, message, tmp_path, capsys):
    code = main(["probe", *_arrays(tmp_path, case), "--out", str(tmp_path / "out"), "--quiet"])
    _one_line_error(capsys, code, message)
    assert not (tmp_path / "out" / "summary.json").exists()


def test_classification_folder_without_labels_is_a_one_line_error(tmp_path, capsys):
    write_feature_dir(tmp_path / "f", {"layer-4_mean": np.zeros((10, 3), np.float32)})
    code = main(["probe", "--train", str(tmp_path / "f"), "--val", str(tmp_path / "f"), "--out", str(tmp_path / "o")])
    _one_line_error(capsys, code, "has no labels", "--label-pattern")


def test_unfinished_extraction_folder_is_a_one_line_error(digits_dirs, tmp_path, capsys):
    import shutil

    train_dir, val_dir = digits_dirs
    broken = tmp_path / "train"
    shutil.copytree(train_dir, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["complete"] = False
    (broken / "manifest.json").write_text(json.dumps(manifest))
    code = main(["probe", "--train", str(broken), "--val", str(val_dir), "--out", str(tmp_path / "o"), "--quiet"])
    _one_line_error(capsys, code, "unfinished")


def test_predict_needs_out_and_features(digits_dirs, tmp_path, capsys):
    train_dir, val_dir = digits_dirs
    _one_line_error(capsys, main(["probe", "--predict", str(tmp_path), "--val", str(val_dir)]), "--out DIR is required")
    _one_line_error(capsys, main(["probe", "--predict", str(tmp_path), "--out", str(tmp_path / "p")]),
                    "--val DIR or --val-features")
    _one_line_error(capsys, main(["probe", "--predict", str(tmp_path), "--val", str(val_dir), "--out",
                                  str(tmp_path / "p")]), "no head.json")


def test_help_and_docs_name_every_option():
    parser = build_parser()
    probe = next(a for a in parser._subparsers._group_actions[0].choices.items() if a[0] == "probe")[1]
    docs = DOCS.read_text()
    options = [s for action in probe._actions for s in action.option_strings if s.startswith("--") and s != "--help"]
    assert len(options) > 30
    missing = [o for o in options if f"`{o}" not in docs]
    assert not missing, f"docs/probes.md does not describe {missing}"
    text = probe.format_help()
    for action in probe._actions:
        if action.default not in (None, False, True, "==SUPPRESS==") and action.option_strings != ["--help"]:
            assert "default" in (action.help or ""), action.option_strings
    assert "--all-layers" in text and "--classes" in text and "predictions.csv" in text
