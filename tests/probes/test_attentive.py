"""The attentive probe (``--method attentive``): AIM's attention-pooling head over patch tokens, through the
one runner: its structure, where it beats a linear probe on pooled features and where it only matches it,
the grid read once per pass, the saved head, and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from sail_vision.probes import FeatureInput, ProbeDataError, load_arrays, load_probe, run_probe
from sail_vision.probes.attentive import AttentiveConfig, AttentivePooling
from sail_vision.probes.linear import LinearConfig

QUICK = dict(lrs=[1e-2, 3e-2], weight_decays=[0.0], epochs=12, batch_size=64, num_heads=4)


def tokens(n: int, seed: int, where: str, p: int = 12, d: int = 16, c: int = 4):
    """(n, p, d) tokens and labels. ``patch``: one marked token (dimension 0 = 4) carries the class embedding,
    the others carry random classes' embeddings, so the mean is nearly uninformative; ``mean``: every token
    is a faint class embedding in strong noise, so the mean is what matters."""
    rng = np.random.default_rng(seed)
    emb = np.random.default_rng(7).normal(0, 1, (c, d))
    emb[:, 0] = 0
    y = rng.integers(0, c, n)
    if where == "patch":
        x = emb[rng.integers(0, c, (n, p))] + rng.normal(0, 0.3, (n, p, d))
        pos = rng.integers(0, p, n)
        x[np.arange(n), pos] = emb[y] + rng.normal(0, 0.3, (n, d))
        x[np.arange(n), pos, 0] = 4.0
    else:
        x = emb[y][:, None, :] * 0.5 + rng.normal(0, 2.0, (n, p, d))
    return x.astype(np.float32), y


def probe_both(where: str, out=None):
    (xt, yt), (xv, yv) = tokens(480, 0, where), tokens(240, 1, where)
    attentive = run_probe(load_arrays(xt, yt, name="tok"), load_arrays(xv, yv, name="tok"), [FeatureInput(("tok",))],
                          out, method="attentive", attentive=AttentiveConfig(**QUICK), verbose=False, progress=False)
    linear = run_probe(load_arrays(xt.mean(1), yt, name="mean"), load_arrays(xv.mean(1), yv, name="mean"),
                       [FeatureInput(("mean",))], None, method="linear", verbose=False, progress=False,
                       linear=LinearConfig(lrs=[0.01, 0.1, 1.0], weight_decays=[0.0], epochs=12, batch_size=64))
    return attentive, linear


@pytest.fixture(scope="module")
def patch_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("attentive") / "probe"
    return (*probe_both("patch", out), out)


def test_structure_is_aims_attention_pooling_classifier():
    torch.manual_seed(0)
    head = AttentivePooling(8, 3, num_heads=2, num_queries=2).eval()
    assert isinstance(head.bn, torch.nn.BatchNorm1d) and not head.bn.affine and head.bn.eps == 1e-6
    assert head.k.bias is None and head.v.bias is None and head.linear.bias is None
    assert head.query.shape == (1, 2, 8)
    with torch.no_grad():
        head.bn.running_mean.uniform_(-1, 1)
        head.bn.running_var.uniform_(0.5, 2)
    x = torch.randn(5, 7, 8)
    normed = (x - head.bn.running_mean) / torch.sqrt(head.bn.running_var + 1e-6)
    k, v = normed @ head.k.weight.t(), normed @ head.v.weight.t()
    outputs = []
    for h in range(2):  # each head attends with its slice of the queries, keys and values
        cols = slice(4 * h, 4 * h + 4)
        weights = torch.softmax(head.query[0, :, cols] @ k[..., cols].transpose(1, 2) / math.sqrt(4), dim=-1)
        outputs.append(weights @ v[..., cols])  # (5, queries, 4)
    expected = torch.cat(outputs, dim=-1).mean(dim=1) @ head.linear.weight.t()
    torch.testing.assert_close(head(x), expected, rtol=1e-5, atol=1e-5)


def test_beats_linear_on_pooled_features_when_the_class_is_in_one_patch(patch_runs):
    attentive, linear, _ = patch_runs
    assert attentive.summary["top1"] > 90
    assert attentive.summary["top1"] - linear.summary["top1"] > 40


def test_matches_linear_on_pooled_features_when_the_class_is_in_the_mean():
    attentive, linear = probe_both("mean")
    assert linear.summary["top1"] > 90
    assert abs(attentive.summary["top1"] - linear.summary["top1"]) <= 5


def test_runs_through_the_runner_and_the_saved_head_predicts_the_same(patch_runs):
    attentive, _, out = patch_runs
    s = attentive.summary
    assert s["method"] == "attentive" and s["selection"] == "holdout" and s["grid_size"] == 2
    assert s["attention_heads"] == 4 and s["queries"] == 1 and s["optimizer"] == "adamw"
    assert [r["name"] for r in attentive.records] == ["attentive_tok_lr0.01_wd0", "attentive_tok_lr0.03_wd0"]
    meta = json.loads((out / "head.json").read_text())
    assert meta["method"] == "attentive" and meta["dim"] == 16 and meta["provenance"]["kind"] == "arrays"
    x, y = tokens(240, 1, "patch")
    loaded = load_probe(out)
    np.testing.assert_array_equal(loaded.predict({"tok": x}), attentive.val_predictions)


def test_each_batch_is_read_once_for_the_whole_grid(monkeypatch):
    from sail_vision.probes import attentive as module
    from sail_vision.probes.attentive import train_heads

    calls = []
    real = module.stream_chunks
    monkeypatch.setattr(module, "stream_chunks", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    x, y = tokens(64, 0, "patch")
    config = AttentiveConfig(**{**QUICK, "epochs": 3, "lrs": [1e-2, 2e-2, 3e-2]})
    heads = train_heads(load_arrays(x, y, name="tok"), FeatureInput(("tok",)), 4, np.arange(64), config,
                        config.grid, progress=False)
    assert len(heads) == 3 and len(calls) == 3  # one pass per epoch, not one per head
    first = [h.query.detach().clone() for h in heads]
    assert not torch.equal(first[0], first[2])  # different learning rates trained them differently


def test_one_line_errors(tmp_path, capsys):
    from sail_vision.cli import main

    x, y = tokens(40, 0, "patch")
    np.save(tmp_path / "tok.npy", x)
    np.save(tmp_path / "pooled.npy", x.mean(1))
    np.save(tmp_path / "y.npy", y)
    common = ["--train-labels", str(tmp_path / "y.npy"), "--val-labels", str(tmp_path / "y.npy"), "--quiet",
              "--device", "cpu"]
    cases = [(["--method", "attentive", "--train-features", str(tmp_path / "pooled.npy"), "--val-features",
               str(tmp_path / "pooled.npy")], "needs (rows, P, D) patch tokens"),
             (["--method", "linear", "--train-features", str(tmp_path / "tok.npy"), "--val-features",
               str(tmp_path / "tok.npy")], "--method attentive reads patch tokens"),
             (["--method", "attentive", "--attention-heads", "5", "--train-features", str(tmp_path / "tok.npy"),
               "--val-features", str(tmp_path / "tok.npy")], "--attention-heads 5 does not divide the feature width 16")]
    for i, (extra, message) in enumerate(cases):
        assert main(["probe", *extra, *common, "--out", str(tmp_path / f"out{i}")]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err
    with pytest.raises(ProbeDataError, match="--standardize does not apply to attentive"):
        run_probe(load_arrays(x, y, name="tok"), None, [FeatureInput(("tok",))], None, method="attentive",
                  standardize=True)


def test_cli_attentive_on_token_arrays(tmp_path, capsys):
    from sail_vision.cli import main

    (xt, yt), (xv, yv) = tokens(200, 0, "patch"), tokens(80, 1, "patch")
    for name, array in (("xt", xt), ("yt", yt), ("xv", xv), ("yv", yv)):
        np.save(tmp_path / f"{name}.npy", array)
    code = main(["probe", "--method", "attentive", "--train-features", str(tmp_path / "xt.npy"), "--train-labels",
                 str(tmp_path / "yt.npy"), "--val-features", str(tmp_path / "xv.npy"), "--val-labels",
                 str(tmp_path / "yv.npy"), "--attention-heads", "4", "--lrs", "0.01", "--epochs", "4", "--quiet",
                 "--device", "cpu", "--out", str(tmp_path / "out")])
    assert code == 0
    assert "attentive probe on xt: val top1" in capsys.readouterr().out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["optimizer"] == "adamw" and summary["weight_decay"] == 0.0 and summary["epochs"] == 4
    code = main(["probe", "--predict", str(tmp_path / "out"), "--val-features", str(tmp_path / "xv.npy"),
                 "--val-labels", str(tmp_path / "yv.npy"), "--device", "cpu", "--out", str(tmp_path / "pred")])
    assert code == 0 and "by the attentive head" in capsys.readouterr().out


def test_feature_folder_patch_entries_are_read_as_tokens(tmp_path, capsys):
    from sail_vision.cli import main
    from sail_vision.feature_store import write_feature_dir
    from sail_vision.probes.data import load_feature_dir

    folders = []
    for split, (n, seed) in {"train": (240, 0), "val": (80, 1)}.items():
        x, y = tokens(n, seed, "patch")  # 12 tokens = a 3 x 4 patch grid
        folders.append(write_feature_dir(tmp_path / split, {"layer-2_patch": x.reshape(n, 3, 4, 16),
                                                            "layer-2_mean": x.mean(1)}, labels=y).path)
    data = load_feature_dir(folders[0], tokens=True)
    assert list(data.features) == ["layer-2_patch"] and data.features["layer-2_patch"].shape == (240, 12, 16)
    np.testing.assert_array_equal(data.features["layer-2_patch"], tokens(240, 0, "patch")[0])
    with pytest.raises(ProbeDataError, match=r"holds patch tokens .* \(or --method attentive\)"):
        load_feature_dir(folders[0], ["layer-2_patch"])
    code = main(["probe", "--method", "attentive", "--train", str(folders[0]), "--val", str(folders[1]),
                 "--attention-heads", "4", "--lrs", "0.01", "--epochs", "2", "--quiet", "--device", "cpu",
                 "--out", str(tmp_path / "out")])
    assert code == 0 and "attentive probe on layer-2_patch" in capsys.readouterr().out
