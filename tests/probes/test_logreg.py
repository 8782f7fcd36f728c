"""logreg: the same accuracy as scikit-learn's LogisticRegression with the same C; a C sweep selects honestly."""

from __future__ import annotations

import numpy as np
import pytest

from sail_vision.probes import FeatureInput, run_probe
from sail_vision.probes.data import load_arrays
from sail_vision.probes.logreg import SMALL_PROBLEM, blas_limits, blas_threads, fit_logreg, head_tensors

PIXELS = FeatureInput(("pixels",))


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_logreg_equals_sklearn_with_the_same_c(c, digits_split, digits_data):
    from sklearn.linear_model import LogisticRegression

    x_train, x_test, y_train, y_test = digits_split
    with blas_limits(x_train, y_train):  # the thread count fit_logreg uses (L-BFGS's path depends on it)
        model = LogisticRegression(C=c, max_iter=1000).fit(x_train, y_train)
    train, val = digits_data
    result = run_probe(train, val, [PIXELS], None, method="logreg", cs=[c], progress=False, verbose=False)
    assert result.summary["top1"] == pytest.approx(100 * model.score(x_test, y_test), abs=1e-9)
    assert result.summary["C"] == c and result.summary["selection"].startswith("single")
    np.testing.assert_array_equal(result.val_predictions, model.predict(x_test))


def test_binary_head_reproduces_predict_proba():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(80, 4))
    y = np.where(x[:, 0] + 0.3 * rng.normal(size=80) > 0, 3, 1)  # labels 1 and 3 of 4 classes
    model = fit_logreg(x, y, 1.0)
    head = head_tensors(model, 4)
    logits = x @ head["weight"].T + head["bias"]
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    np.testing.assert_allclose(probs[:, [1, 3]], model.predict_proba(x), atol=1e-5)
    assert probs[:, [0, 2]].max() < 1e-12


def test_sweep_selects_on_the_holdout_not_on_val(digits_data, digits_split):
    train, val = digits_data
    cs = [1e-5, 0.01, 1.0]
    first = run_probe(train, val, [PIXELS], None, method="logreg", cs=cs, progress=False, verbose=False)
    assert [r["name"] for r in first.records] == ["logreg_pixels_C1e-05", "logreg_pixels_C0.01", "logreg_pixels_C1"]
    assert all(r["holdout_top1"] is not None for r in first.records)
    assert first.records[0]["holdout_top1"] < 90  # heavy regularisation is visibly worse
    # scrambling the val labels cannot change what is chosen, only the reported accuracy
    scrambled = load_arrays(val.features["pixels"], np.random.default_rng(0).permutation(val.labels), name="pixels")
    second = run_probe(train, scrambled, [PIXELS], None, method="logreg", cs=cs, progress=False, verbose=False)
    assert second.summary["chosen"] == first.summary["chosen"]
    assert second.summary["top1"] < first.summary["top1"] - 50


def test_blas_threads_depend_on_the_problem_size_only():
    assert blas_threads(100, 64, 10) == 1
    assert blas_threads(SMALL_PROBLEM, 1, 2) is None
    from threadpoolctl import threadpool_info

    with blas_limits(np.zeros((10, 3)), np.arange(10) % 2):
        assert all(pool["num_threads"] == 1 for pool in threadpool_info() if pool["user_api"] == "blas")


def test_summary_records_the_thread_count(digits_data):
    train, val = digits_data
    result = run_probe(train, val, [PIXELS], None, method="logreg", cs=[1.0], progress=False, verbose=False)
    assert result.summary["blas_threads"] == 1 and result.probe.meta["converged"] in (True, False)
