"""Linear segmentation probes on cached patch features (sail_vision.probes.segmentation).

The feature folders with masks are being written elsewhere; these tests use :class:`FakeSegStore`, an
object with the contract's methods (``patch_maps``, ``has_masks``, ``mask``, ``mask_info``, plus the
``num_valid``, ``names`` and ``manifest`` every FeatureDir has) backed by numpy arrays.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sail_vision.probes import FeatureInput, ProbeDataError
from sail_vision.probes.seg_data import SegmentationData, size_batches
from sail_vision.probes.seg_defaults import IGNORE_INDEX
from sail_vision.probes.seg_heads import SegHeadStack, SegmentationConfig
from sail_vision.probes.seg_metrics import head_histograms, intersect_and_union, segmentation_metrics
from sail_vision.probes.seg_train import train_seg_grid
from sail_vision.probes.segmentation import run_segmentation_probe

PATCH = 4


class FakeSegStore:
    """Per-image patch maps and masks in memory, with the feature folder's mask contract."""

    def __init__(self, features: dict[str, list[np.ndarray]], masks: list[np.ndarray], num_classes: int,
                 classes=None, patch_size: int = PATCH, has_masks: bool = True):
        self.features, self.masks = features, masks
        self.has_masks = has_masks
        self.mask_info = {"file": "masks.npy", "layout": "rows", "offsets": "mask_offsets.npy", "dtype": "uint8",
                          "ignore_index": 255, "reduce_zero_label": True, "num_classes": num_classes,
                          "classes": classes, "resize": "nearest"}
        self.manifest = {"checkpoint": {"config": {"vision_patch_size": patch_size}, "weights_digest": "abc"},
                         "masks": self.mask_info}
        self.names = list(features)
        self.num_valid = len(masks)
        self.reads = 0

    def patch_maps(self, name, index, *, valid_only=True):
        self.reads += 1
        return self.features[name][index]

    def mask(self, index, valid_only=True):
        return self.masks[index]


def make_store(num_images=24, num_classes=3, dims=(6, 5), sizes=((4, 4), (3, 5)), seed=0, noise=0.3,
               classes=("sky", "tree", "road"), ignore_share=0.05, **kwargs) -> FakeSegStore:
    """Learnable data: each patch belongs to a class; every layer's feature is that class's embedding plus
    noise; masks are the patch classes upsampled x PATCH with some ignored pixels. Two image sizes."""
    embeddings = [np.random.default_rng(100 + k).normal(0, 1, (num_classes, d)) for k, d in enumerate(dims)]
    rng = np.random.default_rng(seed)
    features = {f"layer-{k + 1}_patch": [] for k in range(len(dims))}
    masks = []
    for i in range(num_images):
        nh, nw = sizes[i % len(sizes)]
        cls = rng.integers(0, num_classes, (nh, nw))
        for k, emb in enumerate(embeddings):
            maps = emb[cls] + rng.normal(0, noise, (nh, nw, emb.shape[1]))
            features[f"layer-{k + 1}_patch"].append(maps.astype(np.float16))
        mask = np.kron(cls, np.ones((PATCH, PATCH), np.int64)).astype(np.uint8)
        mask[rng.random(mask.shape) < ignore_share] = IGNORE_INDEX
        masks.append(mask)
    return FakeSegStore(features, masks, num_classes, list(classes)[:num_classes] if classes else None, **kwargs)


def seg_data(store, name="fake"):
    return SegmentationData(store, name)


QUICK = dict(lrs=(0.01, 0.1, 1.0), weight_decays=(0.0, 1e-4), epochs=3, batch_size=4)


# ---------------------------------------------------------------------------------- metrics vs mmseg
def _random_case(seed, num_classes=6, shape=(17, 23)):
    rng = np.random.default_rng(seed)
    label = rng.integers(0, num_classes - 1, shape)  # the last class never in the ground truth
    label[rng.random(shape) < 0.2] = IGNORE_INDEX
    pred = rng.integers(0, num_classes - 2, shape)  # classes C-2, C-1 never predicted: C-1 absent from both
    agree = (rng.random(shape) < 0.5) & (label < num_classes - 2)
    pred[agree] = label[agree]
    return pred, label


def test_metrics_equal_mmseg_iou_metric():
    from mmseg.evaluation import IoUMetric

    num_classes = 6
    cases = [_random_case(seed, num_classes) for seed in range(5)]
    metric = IoUMetric(ignore_index=255, iou_metrics=["mIoU"])
    metric.dataset_meta = {"classes": [f"c{i}" for i in range(num_classes)]}
    total = np.zeros((3, num_classes), np.int64)
    for pred, label in cases:
        ours = intersect_and_union(pred, label, num_classes)
        theirs = IoUMetric.intersect_and_union(torch.from_numpy(pred), torch.from_numpy(label), num_classes, 255)
        np.testing.assert_array_equal(ours, np.stack([t.numpy() for t in theirs]))
        total += ours[[0, 2, 3]]
        metric.process({}, [{"pred_sem_seg": {"data": torch.from_numpy(pred)[None]},
                             "gt_sem_seg": {"data": torch.from_numpy(label)[None]}}])
    mine = segmentation_metrics(total)
    fallback = segmentation_metrics(total, use_mmseg=False)  # without mmseg: the same numbers, to the last bit
    for key in ("aAcc", "mIoU", "mAcc"):
        assert fallback[key] == mine[key], key
    np.testing.assert_array_equal(fallback["IoU"], mine["IoU"])
    np.testing.assert_array_equal(fallback["Acc"], mine["Acc"])
    areas = [total[0], total[1] + total[2] - total[0], total[1], total[2]]
    raw = IoUMetric.total_area_to_metrics(*[torch.from_numpy(a.astype(np.float64)) for a in areas], ["mIoU"])
    iou, acc = np.asarray(raw["IoU"], np.float64), np.asarray(raw["Acc"], np.float64)
    assert np.isnan(iou[-1]) and np.isnan(mine["IoU"][-1])  # absent from prediction and ground truth
    np.testing.assert_allclose(mine["IoU"], iou, atol=1e-6, equal_nan=True)
    np.testing.assert_allclose(mine["Acc"], acc, atol=1e-6, equal_nan=True)
    assert abs(mine["mIoU"] - np.nanmean(iou) * 100) < 1e-6
    assert abs(mine["mAcc"] - np.nanmean(acc) * 100) < 1e-6
    assert abs(mine["aAcc"] - float(raw["aAcc"]) * 100) < 1e-6
    reported = metric.evaluate(len(cases))  # mmseg rounds to 2 decimals
    for key in ("mIoU", "mAcc", "aAcc"):
        assert reported[key] == pytest.approx(round(mine[key], 2), abs=1e-9)


def test_head_histograms_count_every_head_like_a_single_prediction():
    rng = np.random.default_rng(3)
    label = rng.integers(0, 4, 500)
    label[:40] = IGNORE_INDEX
    label[40:45] = 7  # out of range and not ignored: counted nowhere, as histc does
    preds = rng.integers(0, 4, (3, 500))
    hist = head_histograms(torch.from_numpy(preds), torch.from_numpy(label), 4).numpy()
    for h in range(3):
        single = intersect_and_union(preds[h], label, 4)
        np.testing.assert_array_equal(hist[h], single[[0, 2, 3]])


# ---------------------------------------------------------------------------------- batching and training
def test_size_batches_group_equal_sizes_once_each_and_are_seeded():
    grids = np.array([(4, 4), (3, 5)] * 7)
    rows = np.arange(14)
    plan = size_batches(rows, grids, 3, np.random.default_rng(0))
    assert sorted(np.concatenate(plan).tolist()) == rows.tolist()
    assert all(len({tuple(grids[r]) for r in batch}) == 1 and len(batch) <= 3 for batch in plan)
    again = size_batches(rows, grids, 3, np.random.default_rng(0))
    assert all(np.array_equal(a, b) for a, b in zip(plan, again))


def test_every_head_of_the_grid_equals_that_head_trained_alone():
    data = seg_data(make_store(num_images=10))
    fi = FeatureInput(("layer-1_patch", "layer-2_patch"))
    config = SegmentationConfig(**QUICK)
    rows = np.arange(10)
    grid = train_seg_grid(data, [fi], rows, config, progress=False)
    for index in (0, 4):
        alone = train_seg_grid(data, [fi], rows, config, grid=[config.grid[index]], progress=False)
        np.testing.assert_allclose(grid.stacks[fi.name].head(index)["weight"], alone.stacks[fi.name].head(0)["weight"],
                                   rtol=1e-4, atol=1e-5)


def test_seg_step_gradient_matches_autograd_through_upsampling():
    torch.manual_seed(0)
    config = SegmentationConfig(lrs=(0.1, 0.5), weight_decays=(0.0,), max_logits=2 * 3 * 8 * 8)  # one head/group
    stack = SegHeadStack(5, 3, [0.1, 0.5], [0.0, 0.0], None, config)
    stack.weight.normal_()
    x = torch.randn(2 * 2 * 2, 5)
    masks = torch.randint(0, 3, (2, 8, 8))
    masks[0, :2] = IGNORE_INDEX
    weight = stack.weight.clone().requires_grad_()
    bias = stack.bias.clone().requires_grad_()
    low = (x @ weight.view(5, -1)).view(2, 2, 2, 2, 3) + bias
    up = torch.nn.functional.interpolate(low.permute(0, 3, 4, 1, 2).reshape(4, 3, 2, 2), size=(8, 8),
                                         mode="bilinear", align_corners=False)
    target = masks.unsqueeze(1).expand(2, 2, 8, 8).reshape(4, 8, 8)
    loss = torch.nn.functional.cross_entropy(up, target, ignore_index=IGNORE_INDEX, reduction="sum")
    (loss / (masks != IGNORE_INDEX).sum()).backward()
    captured = {}
    stack._update = lambda gw, gb, factor: captured.update(w=gw.clone(), b=gb.clone())
    stack.seg_step(x, (2, 2, 2), masks, 1.0, config.max_logits)
    torch.testing.assert_close(captured["w"], weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(captured["b"], bias.grad, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------- the run
@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg") / "probe"
    train, val = make_store(num_images=30, seed=0), make_store(num_images=10, seed=1)
    inputs = [FeatureInput(("layer-2_patch",)), FeatureInput(("layer-1_patch", "layer-2_patch"))]
    result = run_segmentation_probe(seg_data(train, "train"), seg_data(val, "val"), inputs, out,
                                    SegmentationConfig(**QUICK), seed=0, progress=False, verbose=False)
    return result, out, val


def test_run_learns_and_writes_every_output(probe_run):
    result, out, _ = probe_run
    s = result.summary
    # patch-level classes upsampled bilinearly: boundary pixels are the errors
    assert s["mIoU"] > 80 and s["aAcc"] > 90 and s["mAcc"] > 90
    assert abs(s["mIoU"] - s["holdout_mIoU"]) < 10
    assert s["selection"] == "holdout" and s["num_holdout"] == 3 and s["num_fit"] == 27
    assert s["grid_size"] == 12 and len(result.records) == 12
    assert all(r["holdout_mIoU"] is not None for r in result.records)
    best = max(r["holdout_mIoU"] for r in result.records)
    assert s["holdout_mIoU"] == best
    for name in ("grid.jsonl", "summary.json", "head.safetensors", "head.json", "accuracy.png", "per_class.csv",
                 "predictions.png", "mmseg_head.pth"):
        assert (out / name).is_file(), name
    lines = (out / "grid.jsonl").read_text().splitlines()
    assert [json.loads(line)["name"] for line in lines] == [r["name"] for r in result.records]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["per_class"]) == {"sky", "tree", "road"}
    assert summary["mmseg"]["model.decode_head.in_channels"] == result.head.part_dims
    assert summary["metrics_arithmetic"] == "mmseg IoUMetric.total_area_to_metrics"
    assert (out / "per_class.csv").read_text().startswith("class,IoU,Acc,pixels\nsky,")


def test_metrics_without_mmseg_say_so(monkeypatch):
    from sail_vision.probes import seg_metrics

    monkeypatch.setattr(seg_metrics, "_mmseg_areas_to_metrics", lambda: None)
    assert seg_metrics.metrics_arithmetic() == "sail-vision (mmseg not installed)"
    hist = np.array([[5, 0, 2], [6, 0, 2], [7, 0, 3]])  # class 1 neither predicted nor present
    found = seg_metrics.segmentation_metrics(hist)
    assert found["aAcc"] == 70.0 and np.isnan(found["IoU"][1]) and found["IoU"][0] == 5 / 8


def recomputed_areas(head, val_store) -> np.ndarray:
    """(4, C) mmseg areas (intersect, union, pred, label) of ``head``'s predictions, one val image at a time."""
    total = np.zeros((4, 3), np.int64)
    for i in range(val_store.num_valid):
        maps = np.concatenate([val_store.features[p][i].astype(np.float32) for p in head.feature_input.parts], -1)
        mask = val_store.masks[i]
        up = torch.nn.functional.interpolate(head.logits(maps), size=mask.shape, mode="bilinear", align_corners=False)
        total += intersect_and_union(up.argmax(1)[0].numpy(), mask, 3)
    return total


def test_val_metrics_equal_recomputing_them_from_the_head(probe_run):
    result, _, val_store = probe_run
    total = recomputed_areas(result.head, val_store)[[0, 2, 3]]
    assert result.summary["mIoU"] == pytest.approx(segmentation_metrics(total)["mIoU"], abs=1e-9)


def test_confusion_matrix_is_mmseg_areas_of_the_chosen_head(probe_run):
    import csv

    result, out, val_store = probe_run
    total = recomputed_areas(result.head, val_store)
    rows = list(csv.reader((out / "confusion.csv").read_text().splitlines()))
    assert rows[0] == ["true\\predicted", "sky", "tree", "road"] and [r[0] for r in rows[1:]] == ["sky", "tree", "road"]
    matrix = np.asarray([[int(v) for v in r[1:]] for r in rows[1:]])
    np.testing.assert_array_equal(np.diag(matrix), total[0])  # area_intersect
    np.testing.assert_array_equal(matrix.sum(1), total[3])  # area_label
    np.testing.assert_array_equal(matrix.sum(0), total[2])  # area_pred_label
    assert matrix.sum() > np.diag(matrix).sum()  # some boundary pixels are confused
    assert (out / "confusion.png").is_file() and result.summary["files"]["confusion"] == "confusion.csv"


def test_predictions_legend_lists_the_classes_present():
    from sail_vision.probes.seg_export import classes_present

    pred = np.array([[0, 30], [255, 30]], np.uint8)
    gt = np.array([[41, 255], [255, 255]], np.uint8)
    assert classes_present([(0, pred, gt)], 50) == [0, 30, 41]  # not the first 20; ignored pixels left out


def test_confusion_counts_leave_out_ignored_pixels_and_unknown_predictions():
    from sail_vision.probes.seg_metrics import confusion_counts

    pred = torch.tensor([0, 1, 1, 2, 5, 0])
    label = torch.tensor([0, 1, 0, IGNORE_INDEX, 1, 2])
    np.testing.assert_array_equal(confusion_counts(pred, label, 3).numpy(), [[1, 1, 0], [0, 1, 0], [1, 0, 0]])


def test_features_are_read_in_batches_not_held(probe_run):
    store = make_store(num_images=6)
    data = seg_data(store)
    config = SegmentationConfig(lrs=(0.1,), weight_decays=(0.0,), epochs=2, batch_size=2)
    train_seg_grid(data, [FeatureInput(("layer-1_patch",))], np.arange(6), config, progress=False)
    # statistics (6) + 2 epochs (12) + the shape checks: every image read per pass, nothing cached
    assert 18 <= store.reads <= 24


def test_single_grid_point_is_not_selected_and_trains_on_all_train(tmp_path):
    result = run_segmentation_probe(seg_data(make_store(num_images=8)), None, [FeatureInput(("layer-1_patch",))],
                                    None, SegmentationConfig(lrs=(0.1,), weight_decays=(0.0,), epochs=2),
                                    progress=False, verbose=False)
    assert result.summary["selection"].startswith("single") and result.summary["num_fit"] == 8
    assert result.summary["mIoU"] is None


# ---------------------------------------------------------------------------------- bad inputs
def test_one_line_errors_for_bad_inputs():
    with pytest.raises(ProbeDataError, match="has no segmentation masks"):
        seg_data(make_store(num_images=2, has_masks=False))
    unknown = make_store(num_images=2, classes=None)
    unknown.mask_info["num_classes"] = None
    with pytest.raises(ProbeDataError, match="number of classes is unknown"):
        seg_data(unknown)
    train = seg_data(make_store(num_images=4))
    other = seg_data(make_store(num_images=4, num_classes=2, classes=None))
    fi = [FeatureInput(("layer-1_patch",))]
    with pytest.raises(ProbeDataError, match="has 2 classes but .* has 3"):
        run_segmentation_probe(train, other, fi, None, SegmentationConfig(**QUICK), progress=False, verbose=False)
    store = make_store(num_images=4)
    store.masks[0] = store.masks[0][:-1]
    with pytest.raises(ProbeDataError, match="misaligned"):
        run_segmentation_probe(seg_data(store), None, fi, None, SegmentationConfig(**QUICK), progress=False,
                               verbose=False)
    store = make_store(num_images=4)
    store.masks[0][0, 0] = 3
    with pytest.raises(ProbeDataError, match="holds label 3, but there are 3 classes"):
        seg_data(store).check(fi)
    with pytest.raises(ProbeDataError, match="no feature 'layer-9_patch'"):
        run_segmentation_probe(train, None, [FeatureInput(("layer-9_patch",))], None, SegmentationConfig(**QUICK),
                               progress=False, verbose=False)
    pooled = make_store(num_images=2)
    pooled.features["layer-1_patch"] = [np.zeros(6, np.float16)] * 2
    with pytest.raises(ProbeDataError, match="not an \\(nh, nw, D\\) patch map"):
        seg_data(pooled).check(fi)
