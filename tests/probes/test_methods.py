"""The ProbeMethod interface: every built-in method implements it, records and selection are shared."""

from __future__ import annotations

import pytest

from sail_vision.probes.errors import ProbeDataError
from sail_vision.probes.inputs import FeatureInput
from sail_vision.probes.knn import KnnMethod
from sail_vision.probes.linear import LinearConfig, LinearHead, LinearMethod
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


def test_a_registered_method_is_a_cli_choice_with_its_help(monkeypatch):
    from sail_vision.cli import build_parser
    from sail_vision.probes import methods

    monkeypatch.setattr(methods, "_REGISTRY", dict(methods.registered_methods()))

    @methods.register_method
    class Fake(LinearMethod):
        name = "fake-probe"
        summary = "a method only this test knows"

    assert method_class("fake-probe") is Fake
    probe = next(a for a in build_parser()._subparsers._group_actions[0].choices["probe"]._actions
                 if "--method" in a.option_strings)
    assert "fake-probe" in probe.choices and "a method only this test knows" in probe.help
    with pytest.raises(ValueError, match="registered twice"):
        methods.register_method(type("Other", (LinearMethod,), {"name": "fake-probe", "summary": "x"}))


def test_every_registered_method_runs_through_the_one_runner(digits_data, monkeypatch, tmp_path):
    import numpy as np

    from sail_vision.probes import load_arrays, run_probe
    from sail_vision.probes import runner as runner_module
    from sail_vision.probes.attentive import AttentiveConfig
    from sail_vision.probes.depth import DepthMethod
    from sail_vision.probes.depth_train import DepthConfig
    from sail_vision.probes.methods import registered_methods
    from sail_vision.probes.seg_heads import SegmentationConfig
    from sail_vision.probes.segmentation import SegmentationMethod

    from .test_segmentation import make_store, seg_data

    calls = []
    real = runner_module._run
    monkeypatch.setattr(runner_module, "_run", lambda *a, **k: (calls.append(a[4].name), real(*a, **k))[1])
    train, val = digits_data
    tokens = load_arrays(np.repeat(train.features["pixels"][:, None, :], 2, axis=1).astype(np.float32),
                         train.labels, name="pixels")
    token_val = load_arrays(np.repeat(val.features["pixels"][:, None, :], 2, axis=1).astype(np.float32), val.labels,
                            name="pixels")
    cases = {"linear": dict(linear=LinearConfig(lrs=[0.1], weight_decays=[0.0], epochs=1)),
             "logreg": dict(cs=[1.0]), "knn": dict(ks=[1]),
             "attentive": dict(attentive=AttentiveConfig(lrs=[0.01], weight_decays=[0.0], epochs=1, num_heads=4))}
    assert set(registered_methods()) == {*cases, "segmentation-linear", "depth-linear"}
    for name, settings in cases.items():
        data = (tokens, token_val) if name == "attentive" else (train, val)
        result = run_probe(*data, [FeatureInput(("pixels",))], None, method=name, verbose=False, progress=False,
                           **settings)
        assert result.summary["method"] == name and result.summary["top1"] > 20
    seg = run_probe(seg_data(make_store(num_images=8)), seg_data(make_store(num_images=4, seed=1)),
                    [FeatureInput(("layer-1_patch",))], None, verbose=False, progress=False,
                    method=SegmentationMethod(SegmentationConfig(lrs=(0.1, 1.0), weight_decays=(0.0,), epochs=2)))
    assert seg.summary["method"] == "segmentation-linear" and seg.summary["mIoU"] > 20
    depth = run_probe(*_depth_data(tmp_path), [FeatureInput(("layer-1_patch",))], None, verbose=False,
                      progress=False, method=DepthMethod(DepthConfig(lrs=(0.01, 0.1), weight_decays=(0.0,), epochs=2,
                                                                     n_bins=8)))
    assert depth.summary["method"] == "depth-linear" and depth.summary["rmse"] > 0
    assert calls == [*cases, "segmentation-linear", "depth-linear"]


def _depth_data(tmp_path):
    """Train and val depth folders: 2x2 patch maps of width 4 whose first channel sets each patch's depth."""
    import numpy as np

    from sail_vision.feature_store import write_feature_dir
    from sail_vision.probes.depth_train import DepthData

    found = []
    for name, count, seed in (("train", 12, 0), ("val", 4, 1)):
        rng = np.random.default_rng(seed)
        maps = rng.normal(size=(count, 2, 2, 4)).astype(np.float32)
        depths = np.kron(2.0 + maps[..., 0], np.ones((8, 8))).astype(np.float32).clip(0.5, None)
        write_feature_dir(tmp_path / name, {"layer-1_patch": maps}, masks=depths, mask_meta={"depth_scale": 1000},
                          checkpoint={"config": {"vision_patch_size": 8}})
        found.append(DepthData.from_folder(tmp_path / name))
    return found
