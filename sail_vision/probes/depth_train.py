"""Linear depth probes on cached patch features: DINOv2's / DINOv3's linear depth head as a grid trained in
one pass, on the segmentation probe's data path (images batched by patch grid, streamed) and training loop.

Each head is :class:`~.depth_head.LinearDepthHead` (BatchNorm + 1x1 conv to ``n_bins`` outputs, depth the
expectation over the bins, or regression with one output): the BatchNorm in eval mode with the statistics
of every training patch (as the segmentation probe's ``bn="fixed"``), the 1x1 conv trained. Every
(lr, weight decay) head of a feature input is one column block of a stacked weight
(:class:`~.linear.HeadStack`'s optimiser), initialised N(0, 0.01) as the head is. A step: the low-resolution
outputs of every head, depth per head (:func:`~.depth_head.logits_to_depth`), resized bilinearly
(``align_corners=False``) to the depth map's size as mmseg's ``SAILLinearDepthHead.loss_by_feat`` does, and
mmseg's ``SiLogLoss`` (per image, averaged over the batch's images that have a measured pixel).
Evaluation is mmseg's ``DepthMetric`` per image, averaged (:mod:`.depth_metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .depth_head import BIN_SPACINGS, NORMALISATIONS, check_depth_range, logits_to_depth
from .depth_metrics import (NYU_MAX_DEPTH_EVAL, NYU_MIN_DEPTH_EVAL, SILOG_EPS, average_depth_metrics,
                            image_depth_metrics, silog_loss)
from .errors import ProbeDataError
from .inputs import FeatureInput, stored_parts
from .seg_data import SegmentationData, batches, size_batches
from .seg_defaults import DEFAULT_DEPTH_LRS, DEFAULT_DEPTH_WEIGHT_DECAYS
from .seg_heads import SegHeadStack, SegmentationConfig, head_groups

#: The head's conv initialisation (``LinearDepthHead``, DINOv3's ``linear_head.py``).
DEPTH_INIT_STD = 0.01


class DepthData(SegmentationData):
    """(features, depth map) per image of a feature folder extracted with depth maps: float32 metres on the
    pixels of the patch maps, 0 = no measurement (``FeatureDir.target_kind == "depth"``)."""

    def _set_targets(self, info: dict, source: str) -> None:
        if info.get("kind") != "depth":
            raise ProbeDataError(f"{source}: holds segmentation masks, not depth maps; --task depth needs features "
                                 f"extracted with depth maps (--depths DIR or --layout nyu)")
        self.num_classes, self.classes, self.ignore_index = None, None, None

    def _check_target(self, depth: np.ndarray, index: int) -> None:
        if depth.dtype != np.float32 or not np.isfinite(depth).all() or (depth < 0).any():
            raise ProbeDataError(f"{self.source}: depth map of image {index} is not float32 metres >= 0 "
                                 f"({depth.dtype}); re-extract it")

    def valid_pixels(self, masks: np.ndarray) -> int:
        """Measured pixels (depth above SiLogLoss's eps)."""
        return int((masks > SILOG_EPS).sum())


def check_depth_train_val(train: DepthData, val: DepthData | None, inputs: Sequence[FeatureInput]) -> None:
    train.check(inputs)
    if val is None:
        return
    val.check(inputs)
    parts = stored_parts(inputs)
    if train.dims(parts) != val.dims(parts):
        raise ProbeDataError(f"{val.source}: feature widths {val.dims(parts)} differ from train's {train.dims(parts)}")


@dataclass
class DepthConfig(SegmentationConfig):
    """Settings of the depth grid: the head's (``n_bins``, depth range, bins, normalisation), the evaluation
    range, and the segmentation grid's schedule (``batch_size`` counts images)."""

    lrs: Sequence[float] = DEFAULT_DEPTH_LRS
    weight_decays: Sequence[float] = DEFAULT_DEPTH_WEIGHT_DECAYS
    optimizer: str = "adamw"
    n_bins: int = 256
    min_depth: float = 0.001
    max_depth: float = 10.0
    bin_spacing: str = "linear"
    normalisation: str = "linear"
    min_depth_eval: float = NYU_MIN_DEPTH_EVAL
    max_depth_eval: float = NYU_MAX_DEPTH_EVAL

    def check(self) -> None:
        super().check()
        if self.bn != "fixed":
            raise ProbeDataError("--bn batch: depth probes train with the fixed statistics only (--bn fixed)")
        if int(self.n_bins) < 1:
            raise ProbeDataError(f"--n-bins must be at least 1 (1 = regression), got {self.n_bins}")
        try:
            check_depth_range(self.min_depth, self.max_depth)
            check_depth_range(max(self.min_depth_eval, 1e-12), self.max_depth_eval)
        except ValueError as exc:
            raise ProbeDataError(str(exc)) from None
        if self.bin_spacing not in BIN_SPACINGS:
            raise ProbeDataError(f"--bin-spacing {self.bin_spacing!r}: choose one of {', '.join(BIN_SPACINGS)}")
        if self.normalisation not in NORMALISATIONS:
            raise ProbeDataError(f"--normalisation {self.normalisation!r}: choose one of {', '.join(NORMALISATIONS)}")

    def head_settings(self) -> dict:
        """``LinearDepthHead``'s arguments besides the channels."""
        return {"n_bins": int(self.n_bins), "min_depth": float(self.min_depth), "max_depth": float(self.max_depth),
                "bin_spacing": self.bin_spacing, "normalisation": self.normalisation}


class DepthHeadStack(SegHeadStack):
    """H linear depth heads (1x1 convs to ``n_bins`` outputs after the fixed normalisation) over one input."""

    def __init__(self, dim: int, n_bins: int, lrs, weight_decays, standardizer, config: DepthConfig,
                 init: bool = True):
        super().__init__(dim, n_bins, lrs, weight_decays, standardizer, config)
        if init:
            generator = torch.Generator().manual_seed(int(config.seed))
            self.weight.copy_(torch.randn(self.heads, self.num_classes, dim, generator=generator)
                              .mul_(DEPTH_INIT_STD).permute(2, 0, 1))

    def depths(self, low: torch.Tensor, heads: slice, size: tuple[int, int]) -> torch.Tensor:
        """(B*g, 1, H, W) metres of the heads ``heads``: each head's depth, then the bilinear resize."""
        b, _, n, h, w = low.shape
        c = self.config
        depth = logits_to_depth(low[:, heads].reshape(-1, n, h, w), min_depth=c.min_depth, max_depth=c.max_depth,
                                spacing=c.bin_spacing, normalisation=c.normalisation)
        return F.interpolate(depth, size=size, mode="bilinear", align_corners=False)

    def _group_size(self, shape: tuple[int, int, int], size: tuple[int, int]) -> int:
        b, h, w = shape
        return b * (2 * self.num_classes * h * w + 2 * size[0] * size[1])

    def _counted(self, depths: torch.Tensor, valid: int | None) -> torch.Tensor | None:
        """The images with a measured pixel (SiLog is undefined on the others; its sqrt's gradient at 0 would
        be NaN), or None when there is none."""
        if valid == 0:
            return None
        keep = torch.nonzero((depths > SILOG_EPS).flatten(1).any(1)).view(-1)
        return keep if keep.numel() else None

    def _group_loss(self, leaf: torch.Tensor, heads: slice, depths: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(g,) SiLogLoss of the heads ``heads``: per image, averaged over the images ``keep``."""
        b, g, size = leaf.shape[0], heads.stop - heads.start, tuple(depths.shape[1:])
        pred = self.depths(leaf, heads, size).view(b, g, *size)[keep]
        target = depths[keep].unsqueeze(1).expand(-1, g, *size)
        return silog_loss(pred.reshape(-1, 1, *size), target.reshape(-1, 1, *size)).view(-1, g).mean(0)

    def predictions(self, x: torch.Tensor, shape: tuple[int, int, int], size: tuple[int, int],
                    max_logits: int) -> torch.Tensor:
        """(H, B, H_img, W_img) float32 depth in metres of every head."""
        low = self.map_logits(x, shape)
        out = []
        for heads in head_groups(self.heads, self._group_size(shape, size), max_logits):
            depth = self.depths(low, heads, size).view(shape[0], heads.stop - heads.start, *size)
            out.append(depth.transpose(0, 1))
        return torch.cat(out)

    @classmethod
    def from_head(cls, head, config: DepthConfig) -> "DepthHeadStack":
        weight, bias, standardizer = head.folded()
        stack = cls(head.dim, head.num_classes, [1.0], [0.0], standardizer, config, init=False)
        stack.weight.copy_(torch.from_numpy(weight.T.copy()).unsqueeze(1))
        stack.bias.copy_(torch.from_numpy(bias).unsqueeze(0))
        return stack


def depth_stack_factory(config: DepthConfig):
    """What ``train_seg_grid`` builds per feature input: a :class:`DepthHeadStack` of ``config.n_bins`` outputs."""
    def make(dim: int, lrs, weight_decays, standardizer) -> DepthHeadStack:
        return DepthHeadStack(dim, int(config.n_bins), lrs, weight_decays, standardizer, config)
    return make


@dataclass
class DepthEvaluation:
    """Per input, per head: DepthMetric's numbers averaged over the images; the first images' (row,
    prediction, ground truth) of head 0 of the first input."""

    metrics: dict[str, list[dict]]
    shown: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)


def evaluate_depth_stacks(stacks: Mapping[str, DepthHeadStack], inputs: Sequence[FeatureInput], data: DepthData,
                          rows: np.ndarray, config: DepthConfig, *, keep: int = 0) -> DepthEvaluation:
    """Every head of every input scored on ``rows`` (read once, in order, batched by size): per image
    :func:`~.depth_metrics.image_depth_metrics` (the NYU crop on 480x640 maps), averaged over images."""
    parts = stored_parts(inputs)
    plan = size_batches(rows, data.grids(), config.batch_size, None)
    per_image = {fi.name: [[] for _ in range(stacks[fi.name].heads)] for fi in inputs}
    shown = []
    with torch.no_grad():
        for batch in batches(data, plan, parts, config.device):
            size = tuple(batch.masks.shape[1:])
            gt = batch.masks.float().cpu()
            for fi in inputs:
                stack = stacks[fi.name]
                pred = stack.predictions(stack.prepare(fi.concat(batch.features)), batch.shape, size,
                                         config.max_logits).cpu()
                for h in range(stack.heads):
                    per_image[fi.name][h].extend(
                        image_depth_metrics(gt[i], pred[h, i], min_depth=config.min_depth_eval,
                                            max_depth=config.max_depth_eval) for i in range(len(batch.rows)))
                if fi is inputs[0] and len(shown) < keep:
                    for i, row in enumerate(batch.rows[:keep - len(shown)]):
                        shown.append((int(row), pred[0, i].numpy().copy(), gt[i].numpy().copy()))
    return DepthEvaluation({name: [average_depth_metrics(m) for m in heads] for name, heads in per_image.items()},
                           shown)


def depth_head_module(head, config: DepthConfig):
    """The chosen head (a :class:`~.seg_heads.SegmentationHead` of ``n_bins`` outputs) as the one depth head
    class, :class:`~.depth_head.LinearDepthHead`, in eval mode: its BatchNorm gives exactly the probe's
    normalisation (:meth:`~.seg_heads.SegmentationHead.bn_state`), its conv the trained weights. The mmseg
    head ``SAILLinearDepthHead`` runs this module as ``self.head``: its checkpoint keys are
    ``decode_head.head.`` + this module's state-dict keys (:func:`depth_mmseg_state_dict`)."""
    from .depth_head import LinearDepthHead

    module = LinearDepthHead(head.part_dims, **config.head_settings())
    weight = torch.from_numpy(head.weight.copy()).view(head.num_classes, head.dim, 1, 1)
    module.load_state_dict({**{f"bn.{k}": v for k, v in head.bn_state().items()}, "conv.weight": weight,
                            "conv.bias": torch.from_numpy(head.bias.copy())}, strict=True)
    return module.eval()


def depth_mmseg_state_dict(head, config: DepthConfig, prefix: str = "decode_head.head.") -> dict[str, torch.Tensor]:
    """``decode_head.head.bn.*`` and ``decode_head.head.conv.*``: the state of :func:`depth_head_module`."""
    return {f"{prefix}{key}": value for key, value in depth_head_module(head, config).state_dict().items()}
