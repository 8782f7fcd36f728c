"""mmseg's depth arithmetic for depth probes on cached features: ``DepthMetric``'s evaluation mask and
per-image metrics (averaged over images, as ``DepthMetric.compute_metrics``), and ``SiLogLoss``.

Both come from mmseg when it imports (``DepthMetric._calc_all_metrics``, ``silog_loss``), else from this
module's copies of the same torch operations (tests compare the two), as the segmentation metrics take
mmseg's IoU arithmetic. Depths are metres; a ground-truth depth of 0 means no measurement.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch

#: ``DepthMetric``'s metrics, in its order.
DEPTH_METRICS = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")
#: NYUv2's evaluation range (mmseg's NYU config, DINOv2 / DINOv3): ground truth in (0.001, 10) m is scored.
NYU_MIN_DEPTH_EVAL, NYU_MAX_DEPTH_EVAL = 0.001, 10.0
#: ``DepthMetric(crop_type='nyu_crop')``'s box (rows, columns) of a 480x640 NYUv2 map.
NYU_CROP = (slice(45, 471), slice(41, 601))
NYU_SIZE = (480, 640)
#: ``SiLogLoss``'s eps (the module's default, which mmseg configs use; the bare function's is 1e-4): targets
#: at or below it are left out, predictions are clamped to it.
SILOG_EPS = 1e-6


def nyu_crop_applies(size: tuple[int, int]) -> bool:
    """Whether the NYU evaluation crop is used: only for maps of NYUv2's own 480x640 (mmseg would apply
    the fixed box to any size, which on a smaller map scores only its bottom-right corner)."""
    return tuple(size) == NYU_SIZE


def eval_mask(gt: torch.Tensor, min_depth: float = NYU_MIN_DEPTH_EVAL, max_depth: float = NYU_MAX_DEPTH_EVAL,
              crop: bool = False) -> torch.Tensor:
    """``DepthMetric._get_eval_mask``: ``min_depth < gt < max_depth``, inside the NYU crop with ``crop``."""
    valid = torch.logical_and(gt > min_depth, gt < max_depth)
    if crop:
        box = torch.zeros_like(valid)
        box[NYU_CROP] = True
        valid = torch.logical_and(valid, box)
    return valid


def _own_calc_all_metrics(gt_depth: torch.Tensor, pred_depth: torch.Tensor) -> dict[str, float]:
    thresh = torch.max((gt_depth / pred_depth), (pred_depth / gt_depth))
    diff = pred_depth - gt_depth
    diff_log = torch.log(pred_depth) - torch.log(gt_depth)
    return {"d1": (torch.sum(thresh < 1.25).float() / len(thresh)).item(),
            "d2": (torch.sum(thresh < 1.25 ** 2).float() / len(thresh)).item(),
            "d3": (torch.sum(thresh < 1.25 ** 3).float() / len(thresh)).item(),
            "abs_rel": torch.mean(torch.abs(diff) / gt_depth).item(),
            "sq_rel": torch.mean(torch.pow(diff, 2) / gt_depth).item(),
            "rmse": torch.sqrt(torch.mean(torch.pow(diff, 2))).item(),
            "rmse_log": torch.sqrt(torch.mean(torch.pow(diff_log, 2))).item(),
            "log10": torch.mean(torch.abs(torch.log10(pred_depth) - torch.log10(gt_depth))).item(),
            "silog": torch.sqrt(torch.pow(diff_log, 2).mean() - 0.5 * torch.pow(diff_log.mean(), 2)).item()}


def _mmseg_calc_all_metrics():
    try:
        from mmseg.evaluation.metrics import DepthMetric
    except Exception:  # mmseg is an optional extra; any import failure means "not available"
        return None
    return DepthMetric._calc_all_metrics


def _mmseg_silog_loss():
    try:
        from mmseg.models.losses.silog_loss import silog_loss
    except Exception:
        return None
    return silog_loss


def depth_arithmetic() -> dict[str, str]:
    """Whose arithmetic the metrics and the loss are (recorded in summaries)."""
    return {"metrics": ("mmseg DepthMetric._calc_all_metrics" if _mmseg_calc_all_metrics()
                        else "sail-vision copy of DepthMetric._calc_all_metrics (mmseg not installed)"),
            "loss": ("mmseg silog_loss" if _mmseg_silog_loss() else "sail-vision copy of silog_loss "
                                                                    "(mmseg not installed)")}


def image_depth_metrics(gt: torch.Tensor, pred: torch.Tensor, *, min_depth: float = NYU_MIN_DEPTH_EVAL,
                        max_depth: float = NYU_MAX_DEPTH_EVAL, crop: bool | None = None,
                        use_mmseg: bool = True) -> dict[str, float] | None:
    """DepthMetric's numbers of one image: ``pred`` and ``gt`` (H, W) metres on the same pixels, scored
    where :func:`eval_mask` holds (``crop`` None: :func:`nyu_crop_applies` to the map's size). None when
    no pixel is scored (mmseg would give NaN)."""
    gt = gt.squeeze()
    pred = pred.squeeze().to(gt)
    if gt.shape != pred.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in size")
    mask = eval_mask(gt, min_depth, max_depth, nyu_crop_applies(gt.shape) if crop is None else crop)
    if not bool(mask.any()):
        return None
    calc = (_mmseg_calc_all_metrics() if use_mmseg else None) or _own_calc_all_metrics
    return calc(gt[mask], pred[mask])


def average_depth_metrics(per_image: Iterable[Mapping[str, float] | None]) -> dict[str, float | None]:
    """``DepthMetric.compute_metrics``: each metric's plain mean over the scored images (in order);
    images without a scored pixel are left out. Every value None when no image was scored."""
    scored = [m for m in per_image if m is not None]
    if not scored:
        return {k: None for k in DEPTH_METRICS}
    return {k: sum(m[k] for m in scored) / len(scored) for k in DEPTH_METRICS}


def silog_loss(pred: torch.Tensor, target: torch.Tensor, *, use_mmseg: bool = True) -> torch.Tensor:
    """mmseg's ``SiLogLoss`` per image, not reduced: (B,) ``sqrt(mean d^2 - 0.5 mean(d)^2)`` with ``d`` the
    log difference over each image's pixels whose target exceeds :data:`SILOG_EPS`."""
    mmseg_loss = _mmseg_silog_loss() if use_mmseg else None
    if mmseg_loss is not None:
        return mmseg_loss(pred, target, eps=SILOG_EPS, reduction="none")
    pred, target = pred.flatten(1), target.flatten(1)
    diff_log = torch.log(target.clamp(min=SILOG_EPS)) - torch.log(pred.clamp(min=SILOG_EPS))
    valid = (target > SILOG_EPS).detach() & (~torch.isnan(diff_log))
    diff_log[~valid] = 0.0
    valid = valid.float()
    count = valid.sum(dim=1).clamp(min=SILOG_EPS)
    sq_mean = (diff_log.pow(2) * valid).sum(dim=1) / count
    mean = (diff_log * valid).sum(dim=1) / count
    return torch.sqrt(sq_mean - 0.5 * mean.pow(2))
