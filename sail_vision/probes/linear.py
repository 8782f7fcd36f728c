"""A grid of linear softmax heads trained in one pass over streamed features.

All heads of one feature input (every learning rate x weight decay) live in one stacked
(D, H, C) weight, so each mini-batch costs one (B, D) x (D, H*C) matrix product forward and
one back, and the features are read from disk once for the whole grid. Gradients are written
out by hand (softmax cross-entropy) and SGD-with-momentum / AdamW updates use a per-head
learning rate and weight decay under a shared cosine schedule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .data import (DEFAULT_BLOCK_ROWS, DEFAULT_CHUNK_ROWS, FeatureInput, ProbeData, ProbeDataError, input_stats,
                   ordered_chunks, stream_batches)
from .metrics import accuracy_percent, topk_correct

from .defaults import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LRS, DEFAULT_WEIGHT_DECAYS

OPTIMIZERS = ("sgd", "adamw")
#: Logit values evaluated at once (rows x heads x classes), about 200 MB of float32.
EVAL_LOGITS = 50_000_000


@dataclass
class LinearConfig:
    """Training settings shared by every head of the grid."""

    lrs: Sequence[float] = DEFAULT_LRS
    weight_decays: Sequence[float] = DEFAULT_WEIGHT_DECAYS
    optimizer: str = "sgd"
    epochs: int = DEFAULT_EPOCHS
    batch_size: int = DEFAULT_BATCH_SIZE
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    standardize: bool = True
    seed: int = 0
    chunk_rows: int = DEFAULT_CHUNK_ROWS
    block_rows: int = DEFAULT_BLOCK_ROWS
    device: str = "cpu"

    def check(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ProbeDataError(f"--optimizer {self.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        for name, values in (("--lrs", self.lrs), ("--weight-decays", self.weight_decays)):
            if not len(values):
                raise ProbeDataError(f"{name}: give at least one value")
        if any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs):
            raise ProbeDataError(f"--lrs must be positive numbers, got {list(self.lrs)}")
        if any(not (wd >= 0 and math.isfinite(wd)) for wd in self.weight_decays):
            raise ProbeDataError(f"--weight-decays must be >= 0, got {list(self.weight_decays)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ProbeDataError(f"--epochs and --batch-size must be >= 1, got {self.epochs} and {self.batch_size}")

    @property
    def grid(self) -> list[tuple[float, float]]:
        """(lr, weight_decay) of each head, weight decays outermost."""
        return [(float(lr), float(wd)) for wd in self.weight_decays for lr in self.lrs]


def grid_point_name(feature: str, lr: float, weight_decay: float) -> str:
    """DINOv2-style name of one head: ``linear_{feature}_lr{lr}_wd{wd}``."""
    return f"linear_{feature}_lr{lr:.3g}_wd{weight_decay:.3g}"


def cosine_factor(step: int, total: int) -> float:
    """Cosine decay from 1 to 0 over ``total`` steps."""
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


class HeadStack:
    """H linear softmax heads over one feature input, as one (D, H, C) weight and an (H, C) bias."""

    def __init__(self, dim: int, num_classes: int, lrs: Sequence[float], weight_decays: Sequence[float],
                 mean: np.ndarray | None, std: np.ndarray | None, config: LinearConfig):
        heads = len(lrs)
        self.dim, self.num_classes, self.heads = dim, num_classes, heads
        self.config = config
        self.device = device = torch.device(config.device)
        self.lrs = torch.tensor(lrs, dtype=torch.float32, device=device).view(1, heads, 1)
        self.weight_decays = torch.tensor(weight_decays, dtype=torch.float32, device=device).view(1, heads, 1)
        self.mean = None if mean is None else torch.as_tensor(np.asarray(mean, np.float32), device=device)
        self.inv_std = None if std is None else torch.as_tensor(1.0 / np.asarray(std, np.float32), device=device)
        self.weight = torch.zeros(dim, heads, num_classes, device=device)
        self.bias = torch.zeros(heads, num_classes, device=device)
        self._state = [torch.zeros_like(self.weight), torch.zeros_like(self.bias)]
        if config.optimizer == "adamw":
            self._state += [torch.zeros_like(self.weight), torch.zeros_like(self.bias)]
        self.steps = 0

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise with the training statistics (when they were computed)."""
        if self.mean is not None:
            x = (x - self.mean) * self.inv_std
        return x

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, C) logits of every head for prepared features (B, D)."""
        out = x @ self.weight.view(self.dim, -1)
        return out.view(x.shape[0], self.heads, self.num_classes) + self.bias

    def step(self, x: torch.Tensor, labels: torch.Tensor, lr_factor: float) -> torch.Tensor:
        """One optimisation step on a batch; returns the (H,) mean cross-entropy before the step."""
        batch = x.shape[0]
        logits = self.logits(x)
        log_norm = torch.logsumexp(logits, dim=-1)  # (B, H)
        picked = logits.gather(-1, labels.view(batch, 1, 1).expand(batch, self.heads, 1)).squeeze(-1)
        loss = (log_norm - picked).mean(0)
        grad = torch.exp(logits - log_norm.unsqueeze(-1))
        grad.scatter_add_(-1, labels.view(batch, 1, 1).expand(batch, self.heads, 1),
                          torch.full((batch, self.heads, 1), -1.0, device=x.device))
        grad /= batch
        grad_weight = (x.t() @ grad.view(batch, -1)).view_as(self.weight)
        grad_bias = grad.sum(0)
        self._update(grad_weight, grad_bias, lr_factor)
        return loss

    def _update(self, grad_weight: torch.Tensor, grad_bias: torch.Tensor, lr_factor: float) -> None:
        lr = self.lrs * lr_factor  # (1, H, 1)
        self.steps += 1
        if self.config.optimizer == "sgd":
            momentum = self.config.momentum
            buf_w, buf_b = self._state
            grad_weight.addcmul_(self.weight, self.weight_decays)  # in place: the stack can be large
            buf_w.mul_(momentum).add_(grad_weight)
            buf_b.mul_(momentum).add_(grad_bias)
            self.weight.addcmul_(buf_w, lr, value=-1.0)
            self.bias.addcmul_(buf_b, lr[0], value=-1.0)
            return
        beta1, beta2 = self.config.betas
        m_w, m_b, v_w, v_b = self._state
        correction1 = 1.0 - beta1 ** self.steps
        correction2 = 1.0 - beta2 ** self.steps
        self.weight.mul_(1.0 - lr * self.weight_decays)
        for param, grad, m, v, rate in ((self.weight, grad_weight, m_w, v_w, lr), (self.bias, grad_bias, m_b, v_b, lr[0])):
            m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            denom = (v / correction2).sqrt_().add_(1e-8)
            param.sub_(m / denom * (rate / correction1))

    def head(self, index: int) -> dict[str, np.ndarray]:
        """Tensors of one head in the saved format: weight (C, D), bias (C,), mean/std (D,)."""
        tensors = {"weight": self.weight[:, index, :].t().contiguous().cpu().numpy(),
                   "bias": self.bias[index].clone().cpu().numpy()}
        if self.mean is not None:
            tensors["mean"] = self.mean.cpu().numpy()
            tensors["std"] = (1.0 / self.inv_std).cpu().numpy()
        return tensors


@dataclass
class GridResult:
    """Accuracy of every head (holdout or evaluation rows) and the trained stacks."""

    inputs: list[FeatureInput]
    stacks: dict[str, HeadStack]
    points: list[dict] = field(default_factory=list)
    steps: int = 0


def _batch_input(arrays: dict[str, np.ndarray], feature_input: FeatureInput, device) -> torch.Tensor:
    parts = [arrays[p] for p in feature_input.parts]
    return torch.from_numpy(parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)).to(device)


def train_grid(data: ProbeData, inputs: Sequence[FeatureInput], num_classes: int, rows: np.ndarray,
               config: LinearConfig, *, grid: Sequence[tuple[float, float]] | None = None,
               progress: bool = True) -> GridResult:
    """Train every (feature input, lr, weight decay) head on ``rows`` in one pass per epoch."""
    from tqdm.auto import tqdm

    config.check()
    grid = list(grid or config.grid)
    lrs = [lr for lr, _ in grid]
    wds = [wd for _, wd in grid]
    stacks = {}
    for feature_input in inputs:
        mean, std = (input_stats(data, feature_input, rows, config.chunk_rows) if config.standardize
                     else (None, None))
        stacks[feature_input.name] = HeadStack(data.dim(feature_input), num_classes, lrs, wds, mean, std, config)
    names = sorted({p for fi in inputs for p in fi.parts})
    steps_per_epoch = math.ceil(rows.size / config.batch_size)
    total = steps_per_epoch * config.epochs
    rng = np.random.default_rng(config.seed)
    step = 0
    with tqdm(total=total, desc=f"linear grid ({len(inputs)} inputs x {len(grid)} heads)", unit="step",
              disable=not progress, leave=False) as bar:
        for _ in range(config.epochs):
            for arrays, labels in stream_batches(data, names, rows, config.batch_size, rng,
                                                 chunk_rows=config.chunk_rows, block_rows=config.block_rows):
                factor = cosine_factor(step, total)
                target = torch.from_numpy(labels).to(config.device)
                losses = []
                for feature_input in inputs:
                    stack = stacks[feature_input.name]
                    x = stack.prepare(_batch_input(arrays, feature_input, stack.device))
                    losses.append(stack.step(x, target, factor))
                step += 1
                bar.update(1)
                if progress and step % 20 == 0:
                    bar.set_postfix(loss=f"{float(torch.stack(losses).min()):.3f}")
    return GridResult(list(inputs), stacks, steps=step)


def evaluate_grid(result: GridResult, data: ProbeData, rows: np.ndarray | None = None,
                  chunk_rows: int = DEFAULT_CHUNK_ROWS) -> dict[str, tuple[list[float], list[float]]]:
    """{feature input: (top1 per head, top5 per head)} in percent on ``rows`` of ``data``."""
    names = sorted({p for fi in result.inputs for p in fi.parts})
    counts = {fi.name: [0, 0] for fi in result.inputs}
    total = 0
    widest = max(s.heads * s.num_classes for s in result.stacks.values())
    chunk_rows = max(64, min(chunk_rows, EVAL_LOGITS // widest))  # bounds the (rows, H, C) logits
    with torch.no_grad():
        for chunk, arrays in ordered_chunks(data, names, rows, chunk_rows):
            labels = None
            total += chunk.size
            for feature_input in result.inputs:
                stack = result.stacks[feature_input.name]
                if labels is None:
                    labels = torch.from_numpy(data.labels[chunk]).to(stack.device)
                hits = topk_correct(stack.logits(stack.prepare(_batch_input(arrays, feature_input, stack.device))), labels)
                counts[feature_input.name][0] = counts[feature_input.name][0] + hits[1]
                counts[feature_input.name][1] = counts[feature_input.name][1] + hits[5]
    return {name: (accuracy_percent(c1, total), accuracy_percent(c5, total)) for name, (c1, c5) in counts.items()}
