"""The ProbeMethod interface: every built-in method implements it, records and selection are shared."""

from __future__ import annotations

import pytest

from sail_vision.probes.errors import ProbeDataError
from sail_vision.probes.inputs import FeatureInput
from sail_vision.probes.knn import KnnMethod
from sail_vision.probes.linear import LinearHead, LinearMethod
from sail_vision.probes.logreg import LogregMethod
from sail_vision.probes.methods import Head, ProbeMethod, best_record, method_class, record


def test_builtin_methods_implement_the_protocol():
    for method in (LinearMethod(), LogregMethod(), KnnMethod()):
        assert isinstance(method, ProbeMethod)
        assert method_class(method.name) is type(method)
        assert method.metrics == ("top1", "top5")
    head = LinearHead(FeatureInput(("a",)), [[1.0]], [0.0], None)
    assert isinstance(head, Head)
    with pytest.raises(ProbeDataError, match="choose one of linear, logreg, knn"):
        method_class("svm")


def test_records_and_selection():
    fi = FeatureInput(("a", "b"))
    rec = record("x", "linear", fi, {"top1": 50.0, "top5": 90.0}, ("top1", "top5"), lr=0.1)
    assert rec == {"name": "x", "method": "linear", "feature": "a+b", "parts": ["a", "b"], "lr": 0.1,
                   "holdout_top1": 50.0, "holdout_top5": 90.0}
    assert record("y", "knn", fi, None, ("top1",), k=3)["holdout_top1"] is None
    records = [dict(rec, name="first"), dict(rec, name="second"), dict(rec, name="better5", holdout_top5=95.0)]
    assert best_record(records, ("top1", "top5"))["name"] == "better5"
    assert best_record(records[:2], ("top1", "top5"))["name"] == "first"  # ties: the first in grid order
