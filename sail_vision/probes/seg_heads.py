"""Segmentation heads: the grid of 1x1-conv heads after fixed statistics (:class:`SegHeadStack`), the grid of
BatchNorm + 1x1 conv heads trained with batch statistics (:class:`BatchNormHeads`), and the chosen head
(:class:`SegmentationHead`), which runs and exports through :class:`~.seg_module.LinearSegHead`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ProbeDataError
from .inputs import FeatureInput
from .linear import HeadStack, LinearConfig
from .seg_defaults import (DEFAULT_MAX_LOGITS, DEFAULT_SEG_BATCH_SIZE, DEFAULT_SEG_EPOCHS, DEFAULT_SEG_LRS,
                           DEFAULT_SEG_WEIGHT_DECAYS, DEFAULT_SHOW_IMAGES, IGNORE_INDEX)
from .seg_module import BN_EPS, BN_MOMENTUM, LinearSegHead
from .standardize import Standardizer

#: How the BatchNorm in front of the 1x1 conv is trained: ``fixed`` (eval mode, statistics of all train
#: patches, only the conv trained) or ``batch`` (SAILLinearHead as mmseg trains it: batch statistics,
#: trainable affine, running statistics for evaluation).
BN_MODES = ("fixed", "batch")
#: mmseg's BaseDecodeHead initialises conv_seg with N(0, 0.01) and a zero bias; ``bn="batch"`` does the same.
CONV_INIT_STD = 0.01


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
                 max_logits: int, valid: int | None = None) -> torch.Tensor | None:
        """One optimisation step on a batch; returns the (H,) cross-entropy before it (None: no labelled pixel).
        ``valid``: the batch's labelled pixels when known (counted on the host: no device sync here)."""
        counted = self._counted(masks, valid)
        if counted is None:
            return None
        size = tuple(masks.shape[1:])
        leaf = self.map_logits(x, shape).detach().requires_grad_()
        losses = torch.zeros(self.heads, device=x.device)
        with torch.enable_grad():
            for heads in head_groups(self.heads, self._group_size(shape, size), max_logits):
                per_head = self._group_loss(leaf, heads, masks, counted)
                per_head.sum().backward()
                losses[heads] = per_head.detach()
        grad = leaf.grad.permute(0, 3, 4, 1, 2).reshape(x.shape[0], -1)  # (B*h*w, H*C)
        self._update((x.t() @ grad).view_as(self.weight), grad.sum(0).view(self.heads, self.num_classes), lr_factor)
        return losses

    def _counted(self, masks: torch.Tensor, valid: int | None):
        """What the loss averages over (the labelled pixels), or None when nothing counts."""
        valid = int((masks != IGNORE_INDEX).sum()) if valid is None or valid < 0 else int(valid)
        return valid or None

    def _group_size(self, shape: tuple[int, int, int], size: tuple[int, int]) -> int:
        """Upsampled values one head needs on a batch (heads are processed in groups below ``max_logits``)."""
        return shape[0] * self.num_classes * size[0] * size[1]

    def _group_loss(self, leaf: torch.Tensor, heads: slice, masks: torch.Tensor, valid: int) -> torch.Tensor:
        """(g,) cross-entropy of the heads ``heads``, summed over labelled pixels, divided by ``valid``."""
        b, g, size = leaf.shape[0], heads.stop - heads.start, tuple(masks.shape[1:])
        up = self.upsampled(leaf, heads, size)
        target = masks.unsqueeze(1).expand(b, g, *size).reshape(b * g, *size)
        loss = F.cross_entropy(up, target, ignore_index=IGNORE_INDEX, reduction="none")
        return loss.view(b, g, -1).sum((0, 2)) / valid

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
                 max_logits: int, valid: int | None = None) -> torch.Tensor:
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

    def module(self) -> LinearSegHead:
        """This head as a :class:`~.seg_module.LinearSegHead` in eval mode (its BatchNorm from :meth:`bn_state`)."""
        module = LinearSegHead(self.dim, self.num_classes)
        module.load_state_dict({**{f"bn.{k}": v for k, v in self.bn_state().items()},
                                "conv_seg.weight": torch.from_numpy(self.weight.copy()).view(self.num_classes, self.dim, 1, 1),
                                "conv_seg.bias": torch.from_numpy(self.bias.copy())}, strict=True)
        return module.eval()

    def mmseg_state_dict(self, prefix: str = "decode_head.") -> dict[str, torch.Tensor]:
        """The EncoderDecoder's ``decode_head.bn.*`` and ``decode_head.conv_seg.*``: the state of :meth:`module`."""
        return {f"{prefix}{key}": value for key, value in self.module().state_dict().items()}
