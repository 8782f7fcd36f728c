"""run_probe: selection on held-out training rows, refit, evaluation once on val, the ProbeMethod interface."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from sail_vision.probes import FeatureInput, run_probe
from sail_vision.probes.data import ProbeDataError, load_arrays
from sail_vision.probes.linear import LinearConfig, LinearHead
from sail_vision.probes.methods import ClassificationMethod, ProbeMethod, record
from sail_vision.probes.results import best_layer, layer_summary


def test_table_marks_the_chosen_point(digits_data, capsys):
    train, val = digits_data
    result = run_probe(train, val, [FeatureInput(("pixels",))], None, method="knn", ks=[1, 50], progress=False)
    printed = capsys.readouterr().out
    assert f"* {result.summary['chosen']}" in printed and "val: top1" in printed


def test_unknown_method_and_bad_grid_values(digits_data, tmp_path):
    train, val = digits_data
    pixels = [FeatureInput(("pixels",))]
    with pytest.raises(ProbeDataError, match="--method"):
        run_probe(train, val, pixels, None, method="svm", verbose=False)
    with pytest.raises(ProbeDataError, match="--lrs"):
        run_probe(train, val, pixels, None, linear=LinearConfig(lrs=(-1.0,)), verbose=False)
    with pytest.raises(ProbeDataError, match="--Cs"):
        run_probe(train, val, pixels, None, method="logreg", cs=[0.0], verbose=False)
    assert not any(tmp_path.iterdir())


def test_empty_grids_and_settings_that_do_not_apply(digits_data):
    train, val = digits_data
    pixels = [FeatureInput(("pixels",))]
    for kwargs, message in ((dict(method="knn", ks=[]), "--ks: the grid is empty"),
                            (dict(method="logreg", cs=[]), "--Cs: the grid is empty"),
                            (dict(linear=LinearConfig(weight_decays=())), "--weight-decays: the grid is empty"),
                            (dict(method="knn", standardize=True), "does not apply to knn"),
                            (dict(method="knn", chunk_rows=0), "--chunk-rows must be >= 1")):
        with pytest.raises(ProbeDataError, match=message):
            run_probe(train, val, pixels, None, verbose=False, **kwargs)


class NearestCentroid(ClassificationMethod):
    """A toy method written against the ProbeMethod protocol (labels and scoring from ClassificationMethod):
    class means, shrunk by ``alpha``."""

    name: ClassVar[str] = "linear"  # reloads as a linear head (weight = centroids, bias = -|c|^2 / 2)
    hyperparameters: ClassVar[tuple[str, ...]] = ("alpha",)

    def __init__(self, alphas):
        self.alphas = alphas
        self.fits = []

    def check(self):
        pass

    def grid_size(self, inputs):
        return len(inputs) * len(self.alphas)

    def _head(self, train, feature_input, num_classes, rows, alpha):
        x = train.gather(feature_input, rows)
        centroids = np.stack([x[train.labels[rows] == c].mean(0) * alpha for c in range(num_classes)])
        return LinearHead(feature_input, centroids, -0.5 * (centroids ** 2).sum(1), None)

    def fit_grid(self, train, inputs, num_classes, fit_rows, held_rows, *, progress=True):
        from sail_vision.probes.metrics import topk_accuracy

        self.fits.append(("grid", fit_rows.size, None if held_rows is None else held_rows.size))
        records = []
        for fi in inputs:
            for alpha in self.alphas:
                head = self._head(train, fi, num_classes, fit_rows, alpha)
                scores = topk_accuracy(head.scores(train, held_rows), train.labels[held_rows])
                records.append(record(f"centroid_{fi.name}_a{alpha}", self.name, fi, scores, self.metrics,
                                      alpha=alpha))
        return records

    def refit(self, train, chosen, num_classes, rows, *, progress=True):
        self.fits.append(("refit", rows.size, chosen["alpha"]))
        return self._head(train, FeatureInput(tuple(chosen["parts"])), num_classes, rows, chosen["alpha"])

    def settings(self):
        return {"toy": True}


def test_a_method_written_against_the_protocol_runs_through_run_probe(digits_data, tmp_path):
    train, val = digits_data
    method = NearestCentroid([0.0, 1.0])  # alpha 0 makes every score equal: a bad grid point
    assert isinstance(method, ProbeMethod)
    result = run_probe(train, val, [FeatureInput(("pixels",))], tmp_path, method=method, verbose=False)
    assert method.fits == [("grid", 1131, 126), ("refit", 1257, 1.0)]  # selection on 10 % of train, refit on all
    assert result.summary["chosen"] == "centroid_pixels_a1.0" and result.summary["toy"] is True
    assert result.summary["top1"] > 85 and result.records[0]["holdout_top1"] < 20
    from sail_vision.probes import load_probe

    np.testing.assert_array_equal(load_probe(tmp_path).predict(val), result.val_predictions)
    with pytest.raises(ProbeDataError, match="only when the method is given by name"):
        run_probe(train, val, [FeatureInput(("pixels",))], None, method=method, ks=[1], verbose=False)


def test_val_classes_in_another_order_give_the_same_accuracy(digits_split):
    x_train, x_test, y_train, y_test = digits_split
    names = [f"digit{i}" for i in range(10)]
    train = load_arrays(x_train, y_train, name="pixels", classes=names)
    reversed_names = names[::-1]
    val = load_arrays(x_test, 9 - y_test, name="pixels", classes=reversed_names)  # same truth, other numbering
    plain = run_probe(train, load_arrays(x_test, y_test, name="pixels", classes=names), [FeatureInput(("pixels",))],
                      None, method="knn", ks=[5], verbose=False)
    renamed = run_probe(train, val, [FeatureInput(("pixels",))], None, method="knn", ks=[5], verbose=False)
    assert renamed.summary["top1"] == plain.summary["top1"] > 90
    np.testing.assert_array_equal(renamed.val_predictions, plain.val_predictions)


def test_layer_summary_keeps_the_best_point_per_layer():
    records = [
        {"name": "a", "parts": ["layer-2_mean"], "holdout_top1": 50.0, "holdout_top5": 90.0},
        {"name": "b", "parts": ["layer-2_mean"], "holdout_top1": 60.0, "holdout_top5": 80.0},
        {"name": "c", "parts": ["layer-10_mean"], "holdout_top1": 60.0, "holdout_top5": 80.0},
        {"name": "d", "parts": ["layer-2_end", "layer-10_end"], "holdout_top1": 99.0, "holdout_top5": 99.0},
    ]
    rows = layer_summary(records)
    assert [(r["layer"], r["grid_point"]) for r in rows] == [(2, "b"), (10, "c")]
    assert best_layer(rows)["layer"] == 2  # a tie goes to the first in grid order, as for the chosen head
    assert layer_summary(records[:2]) == []  # one layer is not a sweep
