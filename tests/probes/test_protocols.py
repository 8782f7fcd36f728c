"""Named protocols: every pinned value equals the reference code's (the numbers below are copied from the cited
lines of facebookresearch/dinov2 b8931f7 and apple/ml-aim bd9e068), they reach the run and summary.json, and an
option contradicting a protocol is a one-line error naming both."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sail_vision.probes.protocols import PROTOCOLS, protocol_inputs, scale_lr

# dinov2/eval/linear.py:145, :139, :140, :517 (SGD momentum 0.9, weight_decay 0); knn.py:90-91.
DINOV2_LINEAR_LRS = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1]
REFERENCE = {
    "dinov2-linear": {"lrs": [lr * 128 / 256 for lr in DINOV2_LINEAR_LRS], "weight_decays": [0.0], "optimizer": "sgd",
                      "epochs": 10, "batch_size": 128, "standardize": False},
    "dinov2-knn": {"ks": [10, 20, 100, 200], "temperature": 0.07},
    "dinov2-ade20k-linear": {"bn": "batch", "optimizer": "adamw", "lrs": [1e-3], "weight_decays": [1e-4]},
    "dinov2-ade20k-linear-ms": {"bn": "batch", "optimizer": "adamw", "lrs": [1e-3], "weight_decays": [1e-4]},
    "aim-attentive": {"attention_heads": 32, "queries": 1},  # models.py:161-167 with SAIL-7B's 32 heads
}


def test_every_protocol_pins_the_reference_values_and_cites_each():
    assert set(PROTOCOLS) == set(REFERENCE)
    for name, protocol in PROTOCOLS.items():
        assert dict(protocol.values) == REFERENCE[name], name
        for key in protocol.values:
            assert protocol.sources[key], (name, key)
        assert protocol.not_reproduced, name  # each says what cached features cannot do
    assert scale_lr(0.1, 128) == 0.05 and scale_lr(0.1, 128, 8) == 0.4


def test_feature_inputs_of_each_protocol():
    names = [f"layer-{k}_{p}" for k in range(1, 33) for p in ("end", "mean", "patch")]
    names_of = {n: [fi.name for fi in protocol_inputs(PROTOCOLS[n], names)] for n in PROTOCOLS}
    assert names_of["dinov2-linear"] == ["layer-32_end", "layer-32_end+layer-32_mean",
                                         "layer-29_end+layer-30_end+layer-31_end+layer-32_end",
                                         "layer-29_end+layer-30_end+layer-31_end+layer-32_end+layer-32_mean"]
    assert names_of["dinov2-knn"] == ["layer-32_end"]
    assert names_of["dinov2-ade20k-linear"] == ["layer-32_patch"] and names_of["aim-attentive"] == ["layer-32_patch"]
    assert names_of["dinov2-ade20k-linear-ms"] == ["layer-8_patch+layer-16_patch+layer-24_patch+layer-32_patch"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory, digits_split):
    from sail_vision.feature_store import write_feature_dir

    root = tmp_path_factory.mktemp("protocol")
    x_train, x_test, y_train, y_test = digits_split
    out = []
    for split, x, y in (("train", x_train, y_train), ("val", x_test, y_test)):
        features = {f"layer-{k}_{p}": (x + k).astype(np.float32) for k in (1, 2, 3, 4) for p in ("end", "mean")}
        out.append(write_feature_dir(root / split, features, labels=y).path)
    return out


def test_knn_protocol_runs_and_records_every_value(folders, tmp_path, capsys):
    from sail_vision.cli import main

    code = main(["probe", "--protocol", "dinov2-knn", "--train", str(folders[0]), "--val", str(folders[1]),
                 "--quiet", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["method"] == "knn" and s["feature"] == "layer-4_end" and s["temperature"] == 0.07
    assert [r["k"] for r in map(json.loads, (tmp_path / "out" / "grid.jsonl").read_text().splitlines())] == \
        [10, 20, 100, 200]
    assert s["protocol"]["name"] == "dinov2-knn" and s["protocol"]["values"] == REFERENCE["dinov2-knn"]
    assert "knn.py:90" in s["protocol"]["sources"]["ks"] and s["protocol"]["not_reproduced"]


def test_linear_protocol_trains_dinov2s_grid(folders, tmp_path, capsys):
    from sail_vision.cli import main

    code = main(["probe", "--protocol", "dinov2-linear", "--train", str(folders[0]), "--val", str(folders[1]),
                 "--quiet", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
    s = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert s["grid_size"] == 4 * 13 and s["standardized"] is False
    assert (s["optimizer"], s["epochs"], s["batch_size"]) == ("sgd", 10, 128)
    lrs = sorted({r["lr"] for r in map(json.loads, (tmp_path / "out" / "grid.jsonl").read_text().splitlines())})
    assert lrs == pytest.approx(sorted(REFERENCE["dinov2-linear"]["lrs"]))


@pytest.mark.parametrize("extra, message", [
    (["--method", "logreg"], "--method logreg contradicts --protocol dinov2-knn, which sets knn"),
    (["--ks", "5"], "--ks 5 contradicts --protocol dinov2-knn, which sets 10,20,100,200"),
    (["--temperature", "0.1"], "--temperature 0.1 contradicts --protocol dinov2-knn, which sets 0.07"),
    (["--features", "layer-1_end"], "contradict --protocol dinov2-knn"),
    (["--task", "segmentation"], "--protocol dinov2-knn is a classification protocol; it contradicts --task"),
])
def test_a_contradicting_option_names_both(folders, tmp_path, capsys, extra, message):
    from sail_vision.cli import main

    code = main(["probe", "--protocol", "dinov2-knn", "--train", str(folders[0]), "--val", str(folders[1]), *extra,
                 "--quiet", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_agreeing_option_is_accepted(folders, tmp_path, capsys):
    from sail_vision.cli import main

    code = main(["probe", "--protocol", "dinov2-knn", "--ks", "10,20,100,200", "--train", str(folders[0]), "--val",
                 str(folders[1]), "--quiet", "--device", "cpu", "--out", str(tmp_path / "out")])
    assert code == 0, capsys.readouterr().err
