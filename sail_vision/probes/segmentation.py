"""Linear segmentation probes on cached patch features: DINOv2's linear head, a grid trained in one pass.

The head is DINOv2's (and :class:`sail_vision.mmseg.heads.SAILLinearHead`'s): BatchNorm over the
channels, then a 1x1 conv, over one layer's patch map (h, w, D) or the channel concatenation of
several layers (``--features layer-29_patch+layer-30_patch+...``). Its logits (C, h, w) are upsampled
bilinearly (``align_corners=False``, as mmseg's ``resize``) to the mask size (H, W) = (h*p, w*p) and
trained with cross-entropy ignoring 255 (averaged over the non-ignored pixels of a batch).

The normalisation is the BatchNorm in eval mode with fixed statistics: the mean and variance of every
channel over all patches of the training images, computed once (streamed) before training, exactly
like the classification probes' standardisation. A trainable BN affine in front of a linear layer
changes nothing a linear layer cannot represent, so each head trains only the 1x1 conv (weight
(D, C), bias (C,)). Every (lr, weight decay) head of a feature input lives in one stacked weight
(:class:`~.linear.HeadStack`, whose SGD / AdamW update and cosine schedule are reused): each batch's
features are read once and multiplied once for all heads; only the upsampling, which is per head,
is done in groups of heads bounded by ``max_logits``. Every head sees the same batches.

Selection is by mIoU on a seeded held-out part of train's images; the chosen point is refit on all
of train (unless ``refit=False``) and evaluated once on val. Metrics are mmseg's ``IoUMetric``:
intersect / union / prediction / label histograms summed over the whole set, per-class IoU and
accuracy (NaN for classes absent from both prediction and ground truth), mIoU / mAcc as their
nanmean, aAcc over all non-ignored pixels (percent, not rounded; mmseg rounds to 2 decimals).

The chosen head is written as ``head.safetensors`` + ``head.json`` and as an mmseg checkpoint
(``mmseg_head.pth``: ``decode_head.bn.*`` and ``decode_head.conv_seg.*``, readable with
``torch.load(weights_only=True)``) that ``tools/test.py CONFIG mmseg_head.pth`` runs with the backbone.

Data come from :class:`SegmentationData`: per image, patch maps of the named features and the mask,
read one batch at a time (never the whole set in memory); images of different sizes are batched by size.
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import SailVisionError
from .data import split_holdout
from .errors import ProbeDataError
from .inputs import FeatureInput, stored_parts
from .linear import HeadStack, LinearConfig, cosine_factor, grid_point_name
from .methods import record
from .results import (GRID_FILE, HEAD_JSON_FILE, HEAD_TENSORS_FILE, PLOT_FILE, SUMMARY_FILE, claim_output,
                      format_table, save_head, write_json, write_json_lines, write_text)
from .seg_defaults import (DEFAULT_MAX_LOGITS, DEFAULT_SEG_BATCH_SIZE, DEFAULT_SEG_EPOCHS, DEFAULT_SEG_LRS,
                           DEFAULT_SEG_WEIGHT_DECAYS, DEFAULT_SHOW_IMAGES)
from .standardize import Standardizer
from .streaming import prefetched

IGNORE_INDEX = 255
METHOD = "segmentation-linear"
METRICS = ("mIoU", "mAcc", "aAcc")
PER_CLASS_FILE = "per_class.csv"
PREDICTIONS_PLOT_FILE = "predictions.png"
MMSEG_CHECKPOINT_FILE = "mmseg_head.pth"
#: Every file a segmentation probe run writes (and the only ones ``--overwrite`` removes).
SEG_RUN_FILES = (GRID_FILE, SUMMARY_FILE, HEAD_TENSORS_FILE, HEAD_JSON_FILE, PLOT_FILE, PER_CLASS_FILE,
                 PREDICTIONS_PLOT_FILE, MMSEG_CHECKPOINT_FILE)
#: BatchNorm's epsilon (torch and mmcv's default), used when the statistics are exported as BN buffers.
BN_EPS = 1e-5
#: BatchNorm's running-statistics momentum (torch and mmcv's default), for ``bn="batch"``.
BN_MOMENTUM = 0.1
#: How the BatchNorm in front of the 1x1 conv is trained: ``fixed`` (eval mode, statistics of all train
#: patches, only the conv trained) or ``batch`` (SAILLinearHead as mmseg trains it: batch statistics,
#: trainable affine, running statistics for evaluation).
BN_MODES = ("fixed", "batch")
#: mmseg's BaseDecodeHead initialises conv_seg with N(0, 0.01) and a zero bias; ``bn="batch"`` does the same.
CONV_INIT_STD = 0.01


# ---------------------------------------------------------------------------------- metrics (mmseg's IoUMetric)
def head_histograms(pred: torch.Tensor, label: torch.Tensor, num_classes: int,
                    ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """(H, 3, C) int64 histograms (intersection, prediction, label) of H predictions ``pred`` (H, N)
    against ``label`` (N,), pixels labelled ``ignore_index`` left out; values outside 0..C-1 are not
    counted in a histogram (as ``torch.histc`` in mmseg's ``IoUMetric.intersect_and_union``)."""
    pred = pred.reshape(pred.shape[0], -1).long()
    label = label.reshape(-1).long()
    keep = label != ignore_index
    pred, label = pred[:, keep], label[keep]
    heads = pred.shape[0]
    size = heads * num_classes

    def count(values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        inside = (values >= 0) & (values < num_classes)
        flat = (values + offsets)[inside]
        return torch.bincount(flat, minlength=size)[:size].view(heads, num_classes)

    offsets = torch.arange(heads, device=pred.device).view(heads, 1) * num_classes
    hit = pred == label
    inter = count(torch.where(hit, pred, torch.full_like(pred, -1)), offsets)
    predicted = count(pred, offsets)
    labelled = count(label.view(1, -1).expand(heads, -1), offsets)
    return torch.stack([inter, predicted, labelled], dim=1)


def intersect_and_union(pred, label, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(4, C) int64: area_intersect, area_union, area_pred_label, area_label of one prediction."""
    hist = head_histograms(torch.as_tensor(np.asarray(pred)).view(1, -1), torch.as_tensor(np.asarray(label)),
                           num_classes, ignore_index)[0].numpy()
    inter, predicted, labelled = hist
    return np.stack([inter, predicted + labelled - inter, predicted, labelled])


def segmentation_metrics(hist: np.ndarray) -> dict[str, Any]:
    """mmseg's IoUMetric numbers from summed (3, C) histograms (intersection, prediction, label):
    ``aAcc``, ``mIoU``, ``mAcc`` in percent (not rounded) and per-class ``IoU`` / ``Acc`` (fractions,
    NaN where undefined)."""
    inter, predicted, labelled = (np.asarray(h, dtype=np.float64) for h in hist)
    union = predicted + labelled - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
        acc = inter / labelled
        all_acc = inter.sum() / labelled.sum()

    def percent(values):
        if np.all(np.isnan(values)):
            return float("nan")
        return float(np.nanmean(values) * 100)

    return {"aAcc": float(all_acc * 100), "mIoU": percent(iou), "mAcc": percent(acc), "IoU": iou, "Acc": acc}


def _finite(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


# ---------------------------------------------------------------------------------- data
class SegmentationData:
    """(features, mask) per image of a feature folder with masks (or any object with the same methods).

    ``store`` provides ``patch_maps(name, index) -> (nh, nw, D)``, ``has_masks``, ``mask(index) -> (H, W)
    uint8`` (ignore 255), ``mask_info`` (the manifest's ``masks`` entry: ``num_classes``, ``classes``,
    ``ignore_index``...), ``num_valid`` (images), ``names`` (stored features) and ``manifest`` (for the
    patch size, ``manifest["checkpoint"]["config"]["vision_patch_size"]``, and provenance).
    """

    def __init__(self, store, source: str, *, patch_size: int | None = None):
        self.store = store
        self.source = str(source)
        if not getattr(store, "has_masks", False):
            raise ProbeDataError(f"{source}: has no segmentation masks (a classification feature folder?); "
                                 f"--task segmentation needs features extracted together with their masks")
        info = dict(store.mask_info or {})
        self.mask_info = info
        self.manifest = dict(getattr(store, "manifest", None) or {})
        if patch_size is None:
            patch_size = ((self.manifest.get("checkpoint") or {}).get("config") or {}).get("vision_patch_size")
        if not patch_size:
            raise ProbeDataError(f"{source}: the manifest records no patch size (checkpoint.config."
                                 f"vision_patch_size), so masks cannot be aligned with the patch grid")
        self.patch_size = int(patch_size)
        num_classes = info.get("num_classes") or (len(info["classes"]) if info.get("classes") else None)
        if not num_classes:
            raise ProbeDataError(f"{source}: the masks' description records neither num_classes nor classes, "
                                 f"so the number of classes is unknown")
        self.num_classes = int(num_classes)
        self.ignore_index = int(info.get("ignore_index", IGNORE_INDEX))
        if self.ignore_index != IGNORE_INDEX:
            raise ProbeDataError(f"{source}: masks use ignore index {self.ignore_index}; the probe expects 255")
        self.classes = list(info["classes"]) if info.get("classes") else None
        if self.classes is not None and len(self.classes) != self.num_classes:
            raise ProbeDataError(f"{source}: {len(self.classes)} class names for {self.num_classes} classes")
        self.num_images = int(store.num_valid)
        if self.num_images < 1:
            raise ProbeDataError(f"{source}: no images")
        self._grids: np.ndarray | None = None

    def image_groups(self) -> np.ndarray:
        """(num_images,) the source image of each row: the augmented views of one image
        (``extract --views``, paths ``<path>#view=k``) share one id, so a held-out split keeps them together."""
        if not (self.manifest.get("views") or {}).get("count"):
            return np.arange(self.num_images)
        keys = [p.rsplit("#view=", 1)[0] for p in self.store.paths]
        return np.unique(keys, return_inverse=True)[1].reshape(-1)

    @classmethod
    def from_folder(cls, path: str | Path) -> "SegmentationData":
        """Open a feature folder written by ``sail-vision extract`` with masks."""
        from ..feature_store import FeatureStoreError, open_feature_dir

        try:
            store = open_feature_dir(path)
        except FeatureStoreError as exc:
            raise ProbeDataError(str(exc)) from None
        return cls(store, str(path))

    @property
    def names(self) -> list[str]:
        return list(getattr(self.store, "names", []))

    @property
    def palette(self) -> np.ndarray:
        """(C, 3) uint8 colours: the masks' palette when recorded, else a fixed seeded one."""
        palette = self.mask_info.get("palette")
        if palette is not None and len(palette) >= self.num_classes:
            return np.asarray(palette, dtype=np.uint8)[:self.num_classes]
        return np.random.default_rng(42).integers(0, 256, size=(self.num_classes, 3), dtype=np.uint8)

    def maps(self, name: str, index: int) -> np.ndarray:
        """(nh, nw, D) patch map of one stored feature, with a one-line error for non-patch features."""
        try:
            array = np.asarray(self.store.patch_maps(name, int(index)))
        except ProbeDataError:
            raise
        except (KeyError, ValueError, SailVisionError) as exc:  # the store's FeatureStoreError, or a fake's
            raise ProbeDataError(f"{self.source}: feature {name!r}: {exc}") from None
        if array.ndim != 3:
            raise ProbeDataError(f"{self.source}: feature {name!r} gives {array.shape} per image, not an "
                                 f"(nh, nw, D) patch map; segmentation probes read patch features")
        return array

    def mask(self, index: int, grid: tuple[int, int] | None = None) -> np.ndarray:
        """(H, W) uint8 mask of one image, checked against its (nh, nw) patch grid: H = nh*p, W = nw*p."""
        mask = np.asarray(self.store.mask(int(index)))
        if mask.ndim != 2:
            raise ProbeDataError(f"{self.source}: mask of image {index} has shape {mask.shape}, not (H, W)")
        bad = (mask >= self.num_classes) & (mask != IGNORE_INDEX)
        if bad.any():
            raise ProbeDataError(f"{self.source}: mask of image {index} holds label {int(mask[bad].max())}, but "
                                 f"there are {self.num_classes} classes (0 .. {self.num_classes - 1}, 255 ignored)")
        if grid is not None:
            expected = (grid[0] * self.patch_size, grid[1] * self.patch_size)
            if tuple(mask.shape) != expected:
                raise ProbeDataError(f"{self.source}: mask of image {index} is {mask.shape[0]}x{mask.shape[1]} "
                                     f"but its features are a {grid[0]}x{grid[1]} patch grid (x{self.patch_size} "
                                     f"= {expected[0]}x{expected[1]}); masks and features are misaligned")
        return mask

    def dims(self, parts: Sequence[str]) -> list[int]:
        return [int(self.maps(p, 0).shape[-1]) for p in parts]

    def grids(self) -> np.ndarray:
        """(images, 2) (nh, nw) patch grid of every image (from the store's record, else from the masks)."""
        if self._grids is None:
            grids = None
            reader = getattr(self.store, "patch_grids", None)
            if callable(reader):
                grids = reader()
            if grids is None:  # masks are small: their shapes give the grid
                grids = [np.asarray(self.store.mask(i)).shape for i in range(self.num_images)]
                grids = np.asarray(grids, dtype=np.int64) // self.patch_size
            self._grids = np.asarray(grids, dtype=np.int64).reshape(self.num_images, 2)
        return self._grids

    def read(self, index: int, parts: Sequence[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """({part: (nh, nw, D) float32}, (H, W) uint8 mask) of one image, shapes checked."""
        maps = {p: np.asarray(self.maps(p, index), dtype=np.float32) for p in parts}
        grids = {m.shape[:2] for m in maps.values()}
        if len(grids) != 1:
            raise ProbeDataError(f"{self.source}: image {index}: the features have different patch grids {grids}")
        return maps, self.mask(index, next(iter(grids)))

    def check(self, inputs: Sequence[FeatureInput]) -> None:
        """Fail early: every part is a patch feature and the first image's mask fits its grid."""
        names = self.names
        for part in stored_parts(inputs):
            if names and part not in names:
                raise ProbeDataError(f"{self.source}: no feature {part!r}; available: {', '.join(names)}")
        self.read(0, stored_parts(inputs))

    def provenance(self) -> dict:
        from .provenance import folder_provenance

        return folder_provenance(self.manifest)


def check_train_val(train: SegmentationData, val: SegmentationData | None, inputs: Sequence[FeatureInput]) -> None:
    """Refuse val data whose classes, features or patch size differ from train's."""
    train.check(inputs)
    if val is None:
        return
    val.check(inputs)
    if val.num_classes != train.num_classes:
        raise ProbeDataError(f"{val.source} has {val.num_classes} classes but {train.source} has "
                             f"{train.num_classes}; train and val masks must use the same classes")
    if train.classes and val.classes and train.classes != val.classes:
        raise ProbeDataError(f"{val.source}: class names differ from {train.source}'s "
                             f"(first difference: {next(f'{a!r} != {b!r}' for a, b in zip(train.classes, val.classes) if a != b)})")
    if val.patch_size != train.patch_size:
        raise ProbeDataError(f"{val.source}: patch size {val.patch_size}, but {train.source} has {train.patch_size}")
    parts = stored_parts(inputs)
    if train.dims(parts) != val.dims(parts):
        raise ProbeDataError(f"{val.source}: feature widths {val.dims(parts)} differ from train's {train.dims(parts)}")


def size_batches(rows: np.ndarray, grids: np.ndarray, batch_size: int,
                 rng: np.random.Generator | None) -> list[np.ndarray]:
    """Batches of up to ``batch_size`` images of one patch grid each, in a seeded shuffled order (or in
    row order without ``rng``); a size's last, smaller batch is emitted when the plan ends."""
    order = np.asarray(rows) if rng is None else rng.permutation(np.asarray(rows))
    buckets: dict[tuple[int, int], list[int]] = {}
    batches = []
    for row in order:
        key = (int(grids[row][0]), int(grids[row][1]))
        bucket = buckets.setdefault(key, [])
        bucket.append(int(row))
        if len(bucket) == batch_size:
            batches.append(np.asarray(bucket))
            buckets[key] = []
    batches.extend(np.asarray(b) for b in buckets.values() if b)
    return batches


@dataclass
class Batch:
    """One batch on the device: part -> (B*nh*nw, D) features, (B, H, W) int64 masks, its grid."""

    rows: np.ndarray
    features: dict[str, torch.Tensor]
    masks: torch.Tensor
    shape: tuple[int, int, int]


def load_batch(data: SegmentationData, rows: np.ndarray, parts: Sequence[str], device) -> Batch:
    read = [data.read(int(r), parts) for r in rows]
    features = {p: torch.from_numpy(np.stack([maps[p] for maps, _ in read])) for p in parts}
    nh, nw = next(iter(features.values())).shape[1:3]
    masks = torch.from_numpy(np.stack([m for _, m in read]).astype(np.int64))
    return Batch(rows, {p: f.reshape(-1, f.shape[-1]).to(device) for p, f in features.items()},
                 masks.to(device), (len(rows), int(nh), int(nw)))


def batches(data: SegmentationData, plan: Sequence[np.ndarray], parts: Sequence[str], device):
    """The batches of ``plan`` read by a background thread one batch ahead."""
    return prefetched(plan, lambda rows: load_batch(data, rows, parts, device), enabled=len(plan) > 1)


def patch_statistics(data: SegmentationData, parts: Sequence[str], rows: np.ndarray) -> dict[str, tuple]:
    """{part: (mean, std)} float32 over every patch of ``rows`` (float64 sums, one image at a time);
    constant channels get std 1."""
    sums = {}
    count = 0
    for row in rows:
        maps, _ = data.read(int(row), parts)
        for p, m in maps.items():
            flat = m.reshape(-1, m.shape[-1]).astype(np.float64)
            total, square = sums.get(p, (0.0, 0.0))
            sums[p] = (total + flat.sum(0), square + np.square(flat).sum(0))
        count += next(iter(maps.values())).shape[0] * next(iter(maps.values())).shape[1]
    out = {}
    for p, (total, square) in sums.items():
        mean = total / count
        std = np.sqrt(np.maximum(square / count - mean ** 2, 0.0))
        std[std < 1e-6 * max(float(std.max(initial=0.0)), 1e-12)] = 1.0
        out[p] = (mean.astype(np.float32), std.astype(np.float32))
    return out


# ---------------------------------------------------------------------------------- heads
@dataclass
class SegmentationConfig(LinearConfig):
    """Settings of the segmentation grid (``batch_size`` counts images)."""

    lrs: Sequence[float] = DEFAULT_SEG_LRS
    weight_decays: Sequence[float] = DEFAULT_SEG_WEIGHT_DECAYS
    epochs: int = DEFAULT_SEG_EPOCHS
    batch_size: int = DEFAULT_SEG_BATCH_SIZE
    max_logits: int = DEFAULT_MAX_LOGITS
    show_images: int = DEFAULT_SHOW_IMAGES
    bn: str = "fixed"

    def check(self) -> None:
        super().check()
        if self.bn not in BN_MODES:
            raise ProbeDataError(f"--bn {self.bn!r}: choose one of {', '.join(BN_MODES)}")


def head_groups(heads: int, per_head: int, max_logits: int) -> list[slice]:
    """Consecutive head ranges whose upsampled logits (``per_head`` values each) fit in ``max_logits``."""
    size = max(1, min(heads, max_logits // max(per_head, 1)))
    return [slice(start, min(start + size, heads)) for start in range(0, heads, size)]


class SegHeadStack(HeadStack):
    """H linear segmentation heads (1x1 convs after the fixed normalisation) over one feature input."""

    def map_logits(self, x: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        """(B, H, C, h, w) low-resolution logits of every head for prepared features (B*h*w, D)."""
        b, h, w = shape
        return self.logits(x).view(b, h, w, self.heads, self.num_classes).permute(0, 3, 4, 1, 2)

    def upsampled(self, low: torch.Tensor, heads: slice, size: tuple[int, int]) -> torch.Tensor:
        """(B*g, C, H, W) logits of the heads ``heads``, bilinearly upsampled as mmseg's ``resize``."""
        b, _, c, h, w = low.shape
        group = low[:, heads].reshape(-1, c, h, w)
        return F.interpolate(group, size=size, mode="bilinear", align_corners=False)

    def seg_step(self, x: torch.Tensor, shape: tuple[int, int, int], masks: torch.Tensor, lr_factor: float,
                 max_logits: int) -> torch.Tensor | None:
        """One optimisation step on a batch; returns the (H,) cross-entropy before it (None: no labelled pixel)."""
        valid = int((masks != IGNORE_INDEX).sum())
        if valid == 0:
            return None
        b = shape[0]
        size = tuple(masks.shape[1:])
        leaf = self.map_logits(x, shape).detach().requires_grad_()
        losses = torch.zeros(self.heads, device=x.device)
        with torch.enable_grad():
            for heads in head_groups(self.heads, b * self.num_classes * size[0] * size[1], max_logits):
                g = heads.stop - heads.start
                up = self.upsampled(leaf, heads, size)
                target = masks.unsqueeze(1).expand(b, g, *size).reshape(b * g, *size)
                loss = F.cross_entropy(up, target, ignore_index=IGNORE_INDEX, reduction="none")
                per_head = loss.view(b, g, -1).sum((0, 2)) / valid
                per_head.sum().backward()
                losses[heads] = per_head.detach()
        grad = leaf.grad.permute(0, 3, 4, 1, 2).reshape(x.shape[0], -1)  # (B*h*w, H*C)
        self._update((x.t() @ grad).view_as(self.weight), grad.sum(0).view(self.heads, self.num_classes), lr_factor)
        return losses

    def predictions(self, x: torch.Tensor, shape: tuple[int, int, int], size: tuple[int, int],
                    max_logits: int) -> torch.Tensor:
        """(H, B, H_img, W_img) int64 predicted classes of every head."""
        low = self.map_logits(x, shape)
        out = []
        for heads in head_groups(self.heads, shape[0] * self.num_classes * size[0] * size[1], max_logits):
            up = self.upsampled(low, heads, size).argmax(1)
            out.append(up.view(shape[0], heads.stop - heads.start, *size).transpose(0, 1))
        return torch.cat(out)

    @classmethod
    def from_head(cls, head: "SegmentationHead", config: LinearConfig) -> "SegHeadStack":
        weight, bias, standardizer = head.folded()
        stack = cls(head.dim, head.num_classes, [1.0], [0.0], standardizer, config)
        stack.weight.copy_(torch.from_numpy(weight.T.copy()).unsqueeze(1))
        stack.bias.copy_(torch.from_numpy(bias).unsqueeze(0))
        return stack


class BatchNormHeads:
    """H copies of SAILLinearHead trained as mmseg's Runner trains it (``bn="batch"``), over one input.

    Per head: BatchNorm2d in train mode (the batch's mean and biased variance over every patch of the
    batch, eps ``BN_EPS``), a trainable affine (gamma 1, beta 0 at the start), then the 1x1 conv
    (N(0, ``CONV_INIT_STD``) weight seeded by ``seed``, zero bias). The loss is mmseg's default
    ``CrossEntropyLoss`` (``avg_non_ignore=False``): the summed cross-entropy of the non-ignored pixels
    divided by *all* pixels of the batch. Every parameter (BN affine included) is updated by
    ``torch.optim.SGD`` (momentum ``config.momentum``) or ``torch.optim.AdamW`` (``config.betas``,
    eps 1e-8), one parameter group per head with its lr and weight decay, as mmengine's
    ``OptimWrapper`` without ``paramwise_cfg``. The running statistics (momentum ``BN_MOMENTUM``,
    unbiased variance) depend only on the batches, so all heads share them; evaluation uses them,
    as mmseg's test mode does. The batch is normalised once for all heads and each head's logits are
    ``x_hat @ (W * gamma).T + (W @ beta + b)``, the same numbers as BN then conv.
    """

    def __init__(self, dim: int, num_classes: int, lrs: Sequence[float], weight_decays: Sequence[float],
                 config: LinearConfig, seed: int = 0):
        self.dim, self.num_classes, self.heads = int(dim), int(num_classes), len(lrs)
        self.device = torch.device(config.device)
        generator = torch.Generator().manual_seed(int(seed))
        weight = torch.randn(self.num_classes, self.dim, generator=generator) * CONV_INIT_STD
        self.params = [{"gamma": torch.ones(self.dim), "beta": torch.zeros(self.dim), "weight": weight.clone(),
                        "bias": torch.zeros(self.num_classes)} for _ in lrs]
        for head in self.params:
            for key in head:
                head[key] = head[key].to(self.device).requires_grad_()
        groups = [{"params": list(head.values()), "lr": float(lr), "weight_decay": float(wd), "initial_lr": float(lr)}
                  for head, lr, wd in zip(self.params, lrs, weight_decays)]
        if config.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(groups, lr=float(lrs[0]), momentum=config.momentum)
        else:
            self.optimizer = torch.optim.AdamW(groups, lr=float(lrs[0]), betas=tuple(config.betas), eps=1e-8)
        self.running_mean = torch.zeros(self.dim, device=self.device)
        self.running_var = torch.ones(self.dim, device=self.device)
        self.num_batches_tracked = 0

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, torch.float32)

    def _logits(self, x_hat: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
        """(B, H, C, h, w) low-resolution logits of every head for normalised features (B*h*w, D)."""
        b, h, w = shape
        weight = torch.stack([p["weight"] * p["gamma"] for p in self.params])  # (H, C, D)
        bias = torch.stack([p["weight"] @ p["beta"] + p["bias"] for p in self.params])  # (H, C)
        out = x_hat @ weight.reshape(-1, self.dim).t() + bias.reshape(-1)
        return out.view(b, h, w, self.heads, self.num_classes).permute(0, 3, 4, 1, 2)

    def seg_step(self, x: torch.Tensor, shape: tuple[int, int, int], masks: torch.Tensor, lr_factor: float,
                 max_logits: int) -> torch.Tensor:
        """One optimisation step of every head on a batch; returns the (H,) losses before it."""
        b = shape[0]
        size = tuple(masks.shape[1:])
        var, mean = torch.var_mean(x, dim=0, unbiased=False)
        x_hat = (x - mean) * torch.rsqrt(var + BN_EPS)
        n = x.shape[0]
        with torch.no_grad():
            self.running_mean.mul_(1 - BN_MOMENTUM).add_(mean, alpha=BN_MOMENTUM)
            self.running_var.mul_(1 - BN_MOMENTUM).add_(var * (n / max(n - 1, 1)), alpha=BN_MOMENTUM)
            self.num_batches_tracked += 1
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_factor
        losses = torch.zeros(self.heads, device=x.device)
        with torch.enable_grad():
            low = self._logits(x_hat, shape)
            leaf = low.detach().requires_grad_()
            pixels = b * size[0] * size[1]  # mmseg's avg_factor: every pixel, ignored ones included
            for heads in head_groups(self.heads, b * self.num_classes * size[0] * size[1], max_logits):
                g = heads.stop - heads.start
                up = F.interpolate(leaf[:, heads].reshape(-1, self.num_classes, *low.shape[-2:]), size=size,
                                   mode="bilinear", align_corners=False)
                target = masks.unsqueeze(1).expand(b, g, *size).reshape(b * g, *size)
                loss = F.cross_entropy(up, target, ignore_index=IGNORE_INDEX, reduction="none")
                per_head = loss.view(b, g, -1).sum((0, 2)) / pixels
                per_head.sum().backward()
                losses[heads] = per_head.detach()
            self.optimizer.zero_grad(set_to_none=True)
            low.backward(leaf.grad)
        self.optimizer.step()
        return losses

    def head(self, index: int) -> dict[str, np.ndarray]:
        """Tensors of one head: conv ``weight`` (C, D), ``bias`` (C,) and its BatchNorm (``bn_*``)."""
        p = self.params[index]
        return {"weight": p["weight"].detach().cpu().numpy().copy(), "bias": p["bias"].detach().cpu().numpy().copy(),
                "bn_weight": p["gamma"].detach().cpu().numpy().copy(),
                "bn_bias": p["beta"].detach().cpu().numpy().copy(),
                "bn_running_mean": self.running_mean.cpu().numpy().copy(),
                "bn_running_var": self.running_var.cpu().numpy().copy(),
                "bn_num_batches_tracked": np.asarray(self.num_batches_tracked, np.int64)}

    def eval_stack(self, config: LinearConfig) -> SegHeadStack:
        """The heads in eval mode (running statistics) as a SegHeadStack with the BN folded in."""
        folded = [fold_batchnorm(self.head(i)) for i in range(self.heads)]
        stack = SegHeadStack(self.dim, self.num_classes, [1.0] * self.heads, [0.0] * self.heads, folded[0][2], config)
        for i, (weight, bias, _) in enumerate(folded):
            stack.weight[:, i, :].copy_(torch.from_numpy(weight.T.copy()))
            stack.bias[i].copy_(torch.from_numpy(bias))
        return stack


def fold_batchnorm(tensors: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, Standardizer]:
    """(weight (C, D), bias (C,), standardiser) giving BN-in-eval-mode then conv of a ``bn="batch"`` head:
    standardise with the running statistics, then weight * gamma and bias + weight @ beta."""
    weight = np.asarray(tensors["weight"], np.float64)
    gamma, beta = np.asarray(tensors["bn_weight"], np.float64), np.asarray(tensors["bn_bias"], np.float64)
    std = np.sqrt(np.asarray(tensors["bn_running_var"], np.float64) + BN_EPS)
    standardizer = Standardizer(np.asarray(tensors["bn_running_mean"], np.float32), std.astype(np.float32))
    return ((weight * gamma).astype(np.float32), (np.asarray(tensors["bias"], np.float64) + weight @ beta).astype(np.float32),
            standardizer)


@dataclass
class SegGrid:
    inputs: list[FeatureInput]
    stacks: dict[str, SegHeadStack | BatchNormHeads]
    rows: np.ndarray
    steps: int = 0
    losses: list = field(default_factory=list)

    def eval_stacks(self, config: LinearConfig) -> dict[str, SegHeadStack]:
        """Stacks to evaluate: ``bn="batch"`` heads folded with their running statistics."""
        return {k: s.eval_stack(config) if isinstance(s, BatchNormHeads) else s for k, s in self.stacks.items()}


def _standardizers(data: SegmentationData, inputs: Sequence[FeatureInput], rows: np.ndarray,
                   config: LinearConfig) -> dict[str, Standardizer | None]:
    if not config.standardize:
        return {fi.name: None for fi in inputs}
    stats = patch_statistics(data, stored_parts(inputs), rows)
    return {fi.name: Standardizer(np.concatenate([stats[p][0] for p in fi.parts]),
                                  np.concatenate([stats[p][1] for p in fi.parts])) for fi in inputs}


def train_seg_grid(data: SegmentationData, inputs: Sequence[FeatureInput], rows: np.ndarray,
                   config: SegmentationConfig, *, grid: Sequence[tuple[float, float]] | None = None,
                   progress: bool = True, plans: Sequence[Sequence[np.ndarray]] | None = None) -> SegGrid:
    """Train every (feature input, lr, weight decay) head on the images ``rows``, one read per batch.

    ``plans`` (one list of batches of rows per epoch) replaces the seeded shuffled batches; the
    result's ``losses`` holds every step's {input: (H,) losses before the step}."""
    from tqdm.auto import tqdm

    config.check()
    grid = list(grid or config.grid)
    lrs, wds = [lr for lr, _ in grid], [wd for _, wd in grid]
    if config.bn == "batch":
        stacks = {fi.name: BatchNormHeads(sum(data.dims(fi.parts)), data.num_classes, lrs, wds, config,
                                          seed=config.seed) for fi in inputs}
    else:
        standardizers = _standardizers(data, inputs, rows, config)
        stacks = {fi.name: SegHeadStack(sum(data.dims(fi.parts)), data.num_classes, lrs, wds,
                                        standardizers[fi.name], config) for fi in inputs}
    if plans is None:
        grids = data.grids()
        rng = np.random.default_rng(config.seed)
        plans = [size_batches(rows, grids, config.batch_size, rng) for _ in range(config.epochs)]
    plans = [[np.asarray(b) for b in plan] for plan in plans]
    step_losses = []
    total = sum(len(p) for p in plans)
    parts = stored_parts(inputs)
    step = 0
    with tqdm(total=total, desc=f"segmentation grid ({len(inputs)} inputs x {len(grid)} heads)", unit="step",
              disable=not progress, leave=False) as bar:
        for plan in plans:
            for batch in batches(data, plan, parts, config.device):
                factor = cosine_factor(step, total)
                losses = []
                recorded = {}
                for fi in inputs:
                    stack = stacks[fi.name]
                    loss = stack.seg_step(stack.prepare(fi.concat(batch.features)), batch.shape, batch.masks, factor,
                                          config.max_logits)
                    if loss is not None:
                        losses.append(loss)
                        recorded[fi.name] = loss.cpu().numpy()
                step_losses.append(recorded)
                step += 1
                bar.update(1)
                if progress and losses and step % 10 == 0:
                    bar.set_postfix(loss=f"{float(torch.stack(losses).min()):.3f}")
    return SegGrid(list(inputs), stacks, np.asarray(rows), step, step_losses)


@dataclass
class SegEvaluation:
    """Summed (H, 3, C) histograms per feature input, and the first images' predictions of head 0."""

    hists: dict[str, np.ndarray]
    shown: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)


def evaluate_seg_stacks(stacks: Mapping[str, SegHeadStack], inputs: Sequence[FeatureInput], data: SegmentationData,
                        rows: np.ndarray, config: SegmentationConfig, *, keep: int = 0) -> SegEvaluation:
    """Histograms of every head of every input over ``rows`` (read once, in order, batched by size)."""
    parts = stored_parts(inputs)
    plan = size_batches(rows, data.grids(), config.batch_size, None)
    hists = {fi.name: torch.zeros(stacks[fi.name].heads, 3, data.num_classes, dtype=torch.int64,
                                  device=stacks[fi.name].device) for fi in inputs}
    shown = []
    with torch.no_grad():
        for batch in batches(data, plan, parts, config.device):
            size = tuple(batch.masks.shape[1:])
            for fi in inputs:
                stack = stacks[fi.name]
                pred = stack.predictions(stack.prepare(fi.concat(batch.features)), batch.shape, size,
                                         config.max_logits)
                hists[fi.name] += head_histograms(pred.reshape(stack.heads, -1), batch.masks, data.num_classes)
                if fi is inputs[0] and len(shown) < keep:
                    for i, row in enumerate(batch.rows[:keep - len(shown)]):
                        shown.append((int(row), pred[0, i].cpu().numpy().astype(np.uint8),
                                      batch.masks[i].cpu().numpy().astype(np.uint8)))
    return SegEvaluation({k: v.cpu().numpy() for k, v in hists.items()}, shown)


class SegmentationHead:
    """The chosen head: 1x1 conv ``weight`` (C, D), ``bias`` (C,) after the fixed normalisation, or
    (``bn``: the trained BatchNorm's ``bn_weight``, ``bn_bias``, ``bn_running_mean``, ``bn_running_var``,
    ``bn_num_batches_tracked``) after a BatchNorm trained with batch statistics, used in eval mode."""

    def __init__(self, feature_input: FeatureInput, weight: np.ndarray, bias: np.ndarray,
                 standardizer: Standardizer | None, part_dims: Sequence[int], bn: Mapping | None = None):
        self.feature_input = feature_input
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.num_classes, self.dim = (int(v) for v in self.weight.shape)
        self.bn = None if bn is None else {k: np.asarray(v) for k, v in bn.items()}
        self.standardizer = standardizer if self.bn is None else None
        self.part_dims = [int(d) for d in part_dims]

    @classmethod
    def from_tensors(cls, feature_input: FeatureInput, tensors: Mapping, part_dims: Sequence[int]) -> "SegmentationHead":
        bn = {k: v for k, v in tensors.items() if k.startswith("bn_")} or None
        return cls(feature_input, tensors["weight"], tensors["bias"],
                   None if bn else Standardizer.from_tensors(tensors), part_dims, bn)

    def folded(self) -> tuple[np.ndarray, np.ndarray, Standardizer | None]:
        """(weight, bias, standardiser) computing this head in eval mode as standardise-then-linear."""
        if self.bn is None:
            return self.weight, self.bias, self.standardizer
        return fold_batchnorm({"weight": self.weight, "bias": self.bias, **self.bn})

    def logits(self, maps: torch.Tensor | np.ndarray) -> torch.Tensor:
        """(B, C, h, w) logits of (B, h, w, D) or (h, w, D) patch maps (the input's parts concatenated)."""
        x = torch.as_tensor(np.asarray(maps, dtype=np.float32) if isinstance(maps, np.ndarray) else maps).float()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        b, h, w, d = x.shape
        flat = x.reshape(-1, d)
        weight, bias, standardizer = self.folded()
        flat = flat if standardizer is None else standardizer.apply(flat)
        out = flat @ torch.from_numpy(weight).t() + torch.from_numpy(bias)
        return out.view(b, h, w, self.num_classes).permute(0, 3, 1, 2)

    def tensors(self) -> dict[str, np.ndarray]:
        tensors = {"weight": self.weight, "bias": self.bias}
        if self.bn is not None:
            tensors.update(self.bn)
        elif self.standardizer is not None:
            tensors.update(self.standardizer.tensors())
        return tensors

    def bn_state(self) -> dict[str, torch.Tensor]:
        """BatchNorm2d weights: the trained BN of a ``bn="batch"`` head; else those giving exactly this
        head's normalisation in eval mode: running mean = mean, running var = std**2,
        weight = sqrt(std**2 + eps) / std, bias 0 (identity without a standardiser)."""
        if self.bn is not None:
            return {key: torch.from_numpy(np.array(self.bn[f"bn_{key}"], dtype=np.int64 if key == "num_batches_tracked"
                                                   else np.float32))
                    for key in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
        if self.standardizer is None:
            mean, std = np.zeros(self.dim, np.float64), np.sqrt(np.full(self.dim, 1.0 - BN_EPS))
        else:
            mean, std = self.standardizer.mean.astype(np.float64), self.standardizer.std.astype(np.float64)
        var = std ** 2
        return {"weight": torch.from_numpy(np.sqrt(var + BN_EPS) / std).float(),
                "bias": torch.zeros(self.dim), "running_mean": torch.from_numpy(mean).float(),
                "running_var": torch.from_numpy(var).float(), "num_batches_tracked": torch.tensor(0)}

    def mmseg_state_dict(self, prefix: str = "decode_head.") -> "OrderedDict[str, torch.Tensor]":
        """The EncoderDecoder's ``decode_head.bn.*`` and ``decode_head.conv_seg.*`` (SAILLinearHead)."""
        state = OrderedDict()
        for key, value in self.bn_state().items():
            state[f"{prefix}bn.{key}"] = value
        state[f"{prefix}conv_seg.weight"] = torch.from_numpy(self.weight.copy()).view(self.num_classes, self.dim, 1, 1)
        state[f"{prefix}conv_seg.bias"] = torch.from_numpy(self.bias.copy())
        return state


def mmseg_head_settings(head: SegmentationHead, norm: bool | None = None) -> dict:
    """The config values an mmseg model needs to run this head with the SAIL backbone.

    ``layer-K_patch`` is hidden state K, which is what ``SAILBackbone(out_indices=[K])`` returns (both
    count 0 = embeddings .. L = last block with the final norm). ``norm``: whether the features were
    extracted with ``--norm`` (the final RMSNorm on intermediate layers too), the backbone's ``norm``;
    None when unknown (then left out)."""
    from .inputs import parse_feature_name

    layers = [parse_feature_name(p)[0] for p in head.feature_input.parts]
    settings = {"model.backbone.out_indices": layers if all(layer is not None for layer in layers) else None}
    if norm is not None:
        settings["model.backbone.norm"] = bool(norm)
    settings.update({"model.decode_head.in_channels": list(head.part_dims),
                     "model.decode_head.in_index": list(range(len(head.part_dims))),
                     "model.decode_head.num_classes": head.num_classes})
    return settings


def train_norm(data: "SegmentationData") -> bool | None:
    """Whether ``data``'s features were extracted with ``--norm`` (the manifest's preprocessing), None if unknown."""
    norm = (data.manifest.get("preprocessing") or {}).get("norm")
    return None if norm is None else bool(norm)


def mmseg_cfg_options(settings: Mapping) -> list[str]:
    """``--cfg-options`` arguments (KEY=VALUE) of :func:`mmseg_head_settings`' values, None values left out."""
    def text(value) -> str:
        return str(value) if isinstance(value, bool) else json.dumps(value).replace(" ", "")

    return [f"{key}={text(value)}" for key, value in settings.items() if value is not None]


def export_mmseg_checkpoint(head: SegmentationHead, path: str | Path, *, classes: Sequence[str] | None = None,
                            palette=None, norm: bool | None = None, extra_meta: Mapping | None = None) -> Path:
    """Write ``head`` as an mmengine checkpoint (``meta`` + ``state_dict``) of an EncoderDecoder with a
    frozen SAIL backbone and a SAILLinearHead; only tensors and plain values, so it loads with
    ``torch.load(weights_only=True)`` (and therefore with tools/test.py)."""
    try:
        import mmengine

        mmengine_version = mmengine.__version__
    except ImportError:  # the export needs only torch; the version is informative
        mmengine_version = None
    from .. import __version__

    names = list(classes) if classes else [str(i) for i in range(head.num_classes)]
    meta = {"mmengine_version": mmengine_version, "epoch": 0, "iter": 0,
            "time": time.strftime("%Y%m%d_%H%M%S"),
            "dataset_meta": {"classes": names,
                             "palette": None if palette is None else np.asarray(palette).astype(int).tolist()},
            "sail_vision": {"version": __version__, "source": "linear segmentation probe",
                            "feature": head.feature_input.name, "parts": list(head.feature_input.parts),
                            "config": mmseg_head_settings(head, norm=norm), **dict(extra_meta or {})}}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"meta": meta, "state_dict": head.mmseg_state_dict()}, tmp)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------- outputs
def per_class_table(metrics: Mapping, classes: Sequence[str], pixels: np.ndarray) -> tuple[str, str]:
    """(printed table, CSV) of per-class IoU and accuracy in percent ('nan' where mmseg gives NaN)."""
    width = max([len(c) for c in classes] + [5])
    lines = [f"{'class':<{width}}  {'IoU':>7}  {'Acc':>7}  {'pixels':>10}"]
    rows = ["class,IoU,Acc,pixels"]
    for name, iou, acc, count in zip(classes, metrics["IoU"], metrics["Acc"], pixels):
        lines.append(f"{name:<{width}}  {iou * 100:>7.2f}  {acc * 100:>7.2f}  {int(count):>10}")
        rows.append(f"{name},{iou * 100:.4f},{acc * 100:.4f},{int(count)}")
    return "\n".join(lines), "\n".join(rows) + "\n"


def colourise(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 picture of a label map; ignored (and unknown) pixels black."""
    picture = np.zeros((*mask.shape, 3), np.uint8)
    known = mask < len(palette)
    picture[known] = palette[mask[known]]
    return picture


def plot_predictions(shown: Sequence[tuple[int, np.ndarray, np.ndarray]], palette: np.ndarray, out_file: Path,
                     classes: Sequence[str]) -> Path:
    """A row per val image: prediction | ground truth, in the palette's colours, with a legend."""
    from matplotlib.patches import Patch

    from .plot import _pyplot, _save

    plt = _pyplot()
    figure, axes = plt.subplots(len(shown), 2, figsize=(6.4, 3.0 * len(shown)), squeeze=False)
    for (index, pred, gt), row in zip(shown, axes):
        for axis, mask, title in ((row[0], pred, f"image {index}: prediction"), (row[1], gt, "ground truth")):
            axis.imshow(colourise(mask, palette), interpolation="nearest")
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    handles = [Patch(color=palette[i] / 255.0, label=name) for i, name in enumerate(classes[:20])]
    figure.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=7)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(figure, out_file)


# ---------------------------------------------------------------------------------- the run
@dataclass
class SegmentationResult:
    summary: dict
    records: list[dict]
    head: SegmentationHead
    out: Path | None
    table: str = ""
    per_class: str = ""


def _scores(hist: np.ndarray) -> dict[str, float | None]:
    found = segmentation_metrics(hist)
    return {m: _finite(found[m]) for m in METRICS}


def _select_key(rec: Mapping) -> tuple:
    return tuple(-math.inf if rec[f"holdout_{m}"] is None else rec[f"holdout_{m}"] for m in METRICS)


def run_segmentation_probe(train: SegmentationData, val: SegmentationData | None, inputs: Sequence[FeatureInput],
                           out: str | Path | None, config: SegmentationConfig | None = None, *,
                           holdout_fraction: float = 0.1, seed: int = 0, refit: bool = True,
                           overwrite: bool = False, progress: bool = True, verbose: bool = True) -> SegmentationResult:
    """Train the grid on train's images minus a seeded held-out ``holdout_fraction`` (no hold-out with a
    single grid point), choose by held-out mIoU (then mAcc, aAcc), refit on all train (``refit``),
    evaluate once on ``val`` and, with ``out``, write the results folder."""
    from dataclasses import replace

    started = time.monotonic()
    config = replace(config or SegmentationConfig(), seed=seed)
    config.check()
    inputs = list(inputs)
    if not inputs:
        raise ProbeDataError("no feature inputs to probe")
    grid_size = len(inputs) * len(config.grid)
    if grid_size > 1 and not 0 < holdout_fraction < 1:
        raise ProbeDataError(f"--holdout-fraction must be between 0 and 1, got {holdout_fraction}")
    check_train_val(train, val, inputs)
    if out is None:
        return _run(train, val, inputs, None, config, grid_size, holdout_fraction, seed, refit, progress, verbose,
                    started)
    with claim_output(Path(out).expanduser(), result_file=SUMMARY_FILE, own_files=SEG_RUN_FILES,
                      overwrite=overwrite, what="segmentation probe result") as folder:
        return _run(train, val, inputs, folder, config, grid_size, holdout_fraction, seed, refit, progress, verbose,
                    started)


def _run(train, val, inputs, out, config, grid_size, holdout_fraction, seed, refit, progress, verbose, started):
    all_rows = np.arange(train.num_images)
    if grid_size > 1:  # split source images, not rows: an image's views stay on one side
        groups = train.image_groups()
        fit_groups, held_groups = split_holdout(np.zeros(int(groups.max()) + 1, np.int64), holdout_fraction, seed)
        fit_rows, held_rows = np.flatnonzero(np.isin(groups, fit_groups)), np.flatnonzero(np.isin(groups, held_groups))
    else:
        fit_rows, held_rows = all_rows, None
    trained = train_seg_grid(train, inputs, fit_rows, config, progress=progress)
    scores = {}
    if held_rows is not None:
        held = evaluate_seg_stacks(trained.eval_stacks(config), inputs, train, held_rows, config)
        scores = {name: [_scores(h) for h in hist] for name, hist in held.hists.items()}
    records = []
    for fi in inputs:
        for index, (lr, wd) in enumerate(config.grid):
            point = scores[fi.name][index] if scores else None
            records.append(record(grid_point_name(fi.name, lr, wd), METHOD, fi, point, METRICS, lr=lr,
                                  weight_decay=wd))
    chosen = max(records, key=_select_key) if held_rows is not None else records[0]
    feature_input = FeatureInput(tuple(chosen["parts"]))
    point = (chosen["lr"], chosen["weight_decay"])
    refit_all = bool(refit or held_rows is None)
    if refit_all and held_rows is not None:
        again = train_seg_grid(train, [feature_input], all_rows, config, grid=[point], progress=progress)
        tensors = again.stacks[feature_input.name].head(0)
    else:
        tensors = trained.stacks[feature_input.name].head(config.grid.index(point))
    head = SegmentationHead.from_tensors(feature_input, tensors, train.dims(feature_input.parts))
    classes = train.classes or [str(i) for i in range(train.num_classes)]
    measured = {m: None for m in METRICS}
    per_class, per_class_csv, shown, val_metrics = "", "", [], None
    if val is not None:
        stack = SegHeadStack.from_head(head, config)
        evaluation = evaluate_seg_stacks({feature_input.name: stack}, [feature_input], val,
                                         np.arange(val.num_images), config, keep=config.show_images)
        hist = evaluation.hists[feature_input.name][0]
        val_metrics = segmentation_metrics(hist)
        measured = {m: _finite(val_metrics[m]) for m in METRICS}
        per_class, per_class_csv = per_class_table(val_metrics, classes, hist[2])
        shown = evaluation.shown
    hyper = {"lr": chosen["lr"], "weight_decay": chosen["weight_decay"]}
    settings = {"optimizer": config.optimizer, "epochs": config.epochs, "batch_size": config.batch_size,
                "device": str(config.device), "bn": config.bn, "standardized": head.standardizer is not None}
    summary = {"task": "segmentation", "method": METHOD, "feature": feature_input.name, **measured, **hyper,
               "hyperparameters": hyper, **{f"holdout_{m}": chosen.get(f"holdout_{m}") for m in METRICS},
               "chosen": chosen["name"],
               "selection": "holdout" if held_rows is not None else "single grid point (no selection)",
               "holdout_fraction": holdout_fraction if held_rows is not None else 0.0, "seed": seed,
               "refit_on_all_train": refit_all, "num_train": train.num_images, "num_fit": int(fit_rows.size),
               "num_holdout": 0 if held_rows is None else int(held_rows.size),
               "num_val": None if val is None else val.num_images, "num_classes": train.num_classes,
               "classes": classes, "grid_size": grid_size, "train": train.source,
               "val": None if val is None else val.source, **settings,
               "mmseg": mmseg_head_settings(head, norm=train_norm(train))}
    if val_metrics is not None:
        summary["per_class"] = {name: {"IoU": _finite(iou * 100), "Acc": _finite(acc * 100)}
                                for name, iou, acc in zip(classes, val_metrics["IoU"], val_metrics["Acc"])}
    summary["seconds"] = round(time.monotonic() - started, 3)
    table = format_table(records, chosen["name"], summary, METRICS)
    if out is not None:
        from .plot import plot_grid

        write_json_lines(out / GRID_FILE, records)
        meta = {"method": METHOD, "task": "segmentation", "feature": feature_input.name,
                "parts": list(feature_input.parts), "part_dims": head.part_dims, "dim": head.dim,
                "num_classes": train.num_classes, "classes": classes, "patch_size": train.patch_size,
                "hyperparameters": hyper, "grid_point": chosen["name"], "train": train.source,
                "refit_on_all_train": refit_all, "provenance": train.provenance(), **settings}
        save_head(out, meta, head.tensors())
        export_mmseg_checkpoint(head, out / MMSEG_CHECKPOINT_FILE, classes=classes, palette=train.palette,
                                norm=train_norm(train), extra_meta={"grid_point": chosen["name"], "seed": seed, "val_mIoU": measured["mIoU"]})
        plot_grid(records, out / PLOT_FILE, method=METHOD, hyperparameters=("lr", "weight_decay"),
                  chosen=chosen["name"], metric="mIoU")
        files = {"grid": GRID_FILE, "head": HEAD_JSON_FILE, "mmseg_checkpoint": MMSEG_CHECKPOINT_FILE,
                 "plot": PLOT_FILE, "per_class": None, "predictions_plot": None}
        if per_class_csv:
            write_text(out / PER_CLASS_FILE, per_class_csv)
            files["per_class"] = PER_CLASS_FILE
        if shown:
            plot_predictions(shown, train.palette, out / PREDICTIONS_PLOT_FILE, classes)
            files["predictions_plot"] = PREDICTIONS_PLOT_FILE
        summary["files"] = files
        write_json(out / SUMMARY_FILE, summary)
    if verbose:
        print(table if not per_class else f"{table}\n{per_class}")
    return SegmentationResult(summary, records, head, out, table, per_class)
