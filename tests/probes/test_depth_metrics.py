"""Depth probes score with mmseg's DepthMetric arithmetic and train with its SiLogLoss: the per-image
metrics averaged over images equal DepthMetric's on the same predictions (with and without the NYU crop),
and the module's own copies equal mmseg's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sail_vision.probes.depth_metrics import (DEPTH_METRICS, average_depth_metrics, image_depth_metrics,
                                              nyu_crop_applies, silog_loss)

mmseg_metrics = pytest.importorskip("mmseg.evaluation.metrics")


def _pairs(size, count, seed):
    """(gt, pred) metre maps: gt with holes (0) and depths beyond the 10 m range; positive predictions."""
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(count):
        gt = rng.uniform(0.2, 12.0, size=size).astype(np.float32)
        gt[rng.random(size) < 0.1] = 0.0
        pred = np.clip(gt + rng.normal(0, 0.5, size=size), 0.05, None).astype(np.float32)
        pairs.append((torch.from_numpy(gt), torch.from_numpy(pred)))
    return pairs


def _mmseg(pairs, crop_type):
    from mmengine.logging import MMLogger

    MMLogger.get_instance("mmseg-depth-test")
    metric = mmseg_metrics.DepthMetric(min_depth_eval=0.001, max_depth_eval=10.0, crop_type=crop_type)
    metric.process({}, [{"pred_depth_map": {"data": p[None]}, "gt_depth_map": {"data": g[None]}} for g, p in pairs])
    return metric.compute_metrics(metric.results)


@pytest.mark.parametrize("size, crop_type", [((37, 53), None), ((480, 640), "nyu_crop")])
def test_metrics_equal_mmseg_depth_metric(size, crop_type):
    pairs = _pairs(size, 3, seed=len(size) + size[0])
    assert nyu_crop_applies(size) == (crop_type is not None)
    ours = average_depth_metrics(image_depth_metrics(g, p) for g, p in pairs)
    theirs = _mmseg(pairs, crop_type)
    assert list(ours) == list(DEPTH_METRICS)
    assert ours == {k: theirs[k] for k in DEPTH_METRICS}  # exactly: the same arithmetic
    own = average_depth_metrics(image_depth_metrics(g, p, use_mmseg=False) for g, p in pairs)
    assert own == ours
    if crop_type:  # the crop changes the numbers (so it is really applied)
        assert average_depth_metrics(image_depth_metrics(g, p, crop=False) for g, p in pairs) != ours


def test_an_image_without_scored_pixels_is_left_out():
    gt, pred = _pairs((8, 8), 1, seed=0)[0]
    assert image_depth_metrics(torch.zeros(8, 8), pred) is None
    assert average_depth_metrics([None, image_depth_metrics(gt, pred)]) == image_depth_metrics(gt, pred)
    assert average_depth_metrics([None]) == {k: None for k in DEPTH_METRICS}


def test_silog_loss_equals_mmseg_silog_loss():
    from mmseg.models.losses import SiLogLoss

    pairs = _pairs((16, 24), 4, seed=3)
    gt = torch.stack([g for g, _ in pairs])[:, None]
    pred = torch.stack([p for _, p in pairs])[:, None]
    ours = silog_loss(pred, gt)
    assert ours.shape == (4,)
    assert torch.equal(silog_loss(pred, gt, use_mmseg=False), ours)
    assert torch.equal(ours.mean(), SiLogLoss()(pred, gt))

