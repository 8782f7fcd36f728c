"""Few-shot results with Student-t intervals over seeds, and the bootstrap interval of full-data top-1."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from sail_vision.probes import FeatureInput, ProbeDataError, run_probe
from sail_vision.probes.fewshot import bootstrap_ci, sample_shots, t_interval

PIXELS = [FeatureInput(("pixels",))]


def few_shot(digits_data, seeds, seed=0, out=None, shots=(1, 4)):
    train, val = digits_data
    return run_probe(train, val, PIXELS, out, method="knn", ks=[1], seed=seed, shots=shots, shot_seeds=seeds,
                     verbose=False, progress=False)


def test_shots_are_k_rows_of_every_class_reproducible_by_seed():
    labels = np.repeat(np.arange(4), [5, 6, 7, 8])
    rows = sample_shots(labels, 3, seed=1, index=0)
    assert np.bincount(labels[rows]).tolist() == [3, 3, 3, 3] and np.all(np.diff(rows) > 0)
    np.testing.assert_array_equal(rows, sample_shots(labels, 3, seed=1, index=0))
    assert not np.array_equal(rows, sample_shots(labels, 3, seed=1, index=1))
    with pytest.raises(ProbeDataError, match="--shots 6: class '0' has only 5 training rows"):
        sample_shots(labels, 6, seed=1, index=0)


def test_t_interval_is_students():
    values = [70.0, 72.5, 69.0, 75.0]
    low, high = t_interval(values)
    half = stats.t.ppf(0.975, 3) * np.std(values, ddof=1) / 2
    assert low == pytest.approx(np.mean(values) - half) and high == pytest.approx(np.mean(values) + half)
    assert t_interval([70.0]) is None


def test_few_shot_intervals_contain_the_mean_widen_with_fewer_seeds_and_are_reproducible(digits_data):
    many = few_shot(digits_data, seeds=10).summary["few_shot"]
    few = few_shot(digits_data, seeds=3).summary["few_shot"]
    for entries, seeds in ((many, 10), (few, 3)):
        assert [e["shots"] for e in entries] == [1, 4] and all(e["seeds"] == seeds for e in entries)
        for e in entries:
            assert len(e["top1_per_seed"]) == seeds
            assert e["top1_mean"] == pytest.approx(np.mean(e["top1_per_seed"]))
            assert e["top1_ci95"][0] < e["top1_mean"] < e["top1_ci95"][1]
    for a, b in zip(many, few):
        assert a["top1_per_seed"][:3] == b["top1_per_seed"]  # seed s draws the same subset however many seeds
        assert b["top1_ci95"][1] - b["top1_ci95"][0] > a["top1_ci95"][1] - a["top1_ci95"][0]
    assert many[0]["top1_mean"] < many[1]["top1_mean"]  # more shots, better
    assert few_shot(digits_data, seeds=3).summary["few_shot"] == few
    assert few_shot(digits_data, seeds=3, seed=5).summary["few_shot"] != few


def test_full_data_top1_has_a_bootstrap_interval(digits_data, tmp_path):
    result = few_shot(digits_data, seeds=2, out=tmp_path / "run")
    s = result.summary
    low, high = s["top1_ci95"]
    assert low < s["top1"] < high and high - low < 10
    assert s["bootstrap"] == {"resamples": 1000, "seed": 0, "level": 0.95, "over": "val rows"}
    correct = result.val_predictions == digits_data[1].labels
    assert bootstrap_ci(correct, 0) == [low, high]
    assert (tmp_path / "run" / "few_shot.png").is_file()
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["few_shot"] == s["few_shot"] and saved["files"]["few_shot_plot"] == "few_shot.png"


def test_bootstrap_of_all_correct_and_none():
    assert bootstrap_ci(np.ones(50, bool), 0) == [100.0, 100.0]
    assert bootstrap_ci(np.zeros(0, bool), 0) is None


def test_shots_errors(digits_data, tmp_path, capsys):
    from sail_vision.cli import main

    train, val = digits_data
    with pytest.raises(ProbeDataError, match="--shots needs val"):
        run_probe(train, None, PIXELS, None, method="knn", ks=[1], shots=[1], verbose=False)
    with pytest.raises(ProbeDataError, match="--shots must be whole numbers >= 1"):
        run_probe(train, val, PIXELS, None, method="knn", ks=[1], shots=[0], verbose=False)
    code = main(["probe", "--task", "segmentation", "--train", "a", "--val", "b", "--features", "x", "--shots", "1",
                 "--out", str(tmp_path / "o")])
    assert code == 2 and "--shots applies to --task classification only" in capsys.readouterr().err
