"""`sail-vision probe` end to end: extraction folders, plain arrays, --predict, and one-line errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sail_vision.cli import main


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
    assert main(["probe", "--predict", str(out), "--val", str(val_dir), "--out", str(tmp_path / "pred")]) == 0
    predictions = np.load(tmp_path / "pred" / "predictions.npy")
    assert predictions.shape == (540,)
    labels = np.load(val_dir / "labels.npy")
    assert 100 * (predictions == labels).mean() == pytest.approx(summary["top1"])


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


@pytest.mark.parametrize("case, message", [
    ("length", "labels for"),
    ("nan", "NaN/Inf values, first at row 2"),
    ("single", "at least two classes"),
    ("unseen", "never seen in train"),
    ("nolabels", "--train-labels"),
])
def test_bad_input_is_a_one_line_error(case, message, tmp_path, capsys):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4)).astype(np.float32)
    y = np.arange(30) % 3
    y_val = y.copy()
    args = ["--val-features", str(tmp_path / "x.npy"), "--val-labels", str(tmp_path / "yv.npy")]
    if case == "length":
        y = y[:-2]
    elif case == "nan":
        x[2, 1] = np.nan
    elif case == "single":
        y = np.zeros(30, int)
    elif case == "unseen":
        y_val = y_val + 1
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    np.save(tmp_path / "yv.npy", y_val)
    train = ["--train-features", str(tmp_path / "x.npy")]
    if case != "nolabels":
        train += ["--train-labels", str(tmp_path / "y.npy")]
    code = main(["probe", *train, *args, "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_unfinished_extraction_folder_is_a_one_line_error(digits_dirs, tmp_path, capsys):
    import shutil

    train_dir, val_dir = digits_dirs
    broken = tmp_path / "train"
    shutil.copytree(train_dir, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["complete"] = False
    (broken / "manifest.json").write_text(json.dumps(manifest))
    code = main(["probe", "--train", str(broken), "--val", str(val_dir), "--out", str(tmp_path / "o"), "--quiet"])
    assert code == 2 and "unfinished" in capsys.readouterr().err
