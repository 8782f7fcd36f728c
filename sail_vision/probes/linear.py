"""A grid of linear softmax heads trained in one pass over streamed features.

All heads of one feature input (every learning rate x weight decay) live in one stacked
(D, H, C) weight, so each mini-batch costs one (B, D) x (D, H*C) matrix product forward and
one back, and the features are read from disk once for the whole grid; every feature input
is trained from the same mini-batches. Gradients are written out by hand (softmax
cross-entropy) and SGD-with-momentum / AdamW updates use a per-head learning rate and weight
decay under a shared cosine schedule. Chunks of rows move to the device once
(:mod:`.streaming`); mini-batches are indexed there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Mapping, Sequence

import numpy as np
import torch

from .data import ProbeData
from .defaults import (DEFAULT_BATCH_SIZE, DEFAULT_BLOCK_ROWS, DEFAULT_CHUNK_ROWS, DEFAULT_EPOCHS, DEFAULT_LRS,
                       DEFAULT_WEIGHT_DECAYS)
from .errors import ProbeDataError
from .inputs import FeatureInput, stored_parts
from .methods import GridMethod, record, register_method
from .metrics import TopkCounter
from .standardize import Standardizer
from .streaming import stream_chunks

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
                raise ProbeDataError(f"{name}: the grid is empty; give at least one value")
        if any(not (lr > 0 and math.isfinite(lr)) for lr in self.lrs):
            raise ProbeDataError(f"--lrs must be positive numbers, got {list(self.lrs)}")
        if any(not (wd >= 0 and math.isfinite(wd)) for wd in self.weight_decays):
            raise ProbeDataError(f"--weight-decays must be >= 0, got {list(self.weight_decays)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ProbeDataError(f"--epochs and --batch-size must be >= 1, got {self.epochs} and {self.batch_size}")
        if self.chunk_rows < 1:
            raise ProbeDataError(f"--chunk-rows must be >= 1, got {self.chunk_rows}")

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


def linear_logits(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """(N, C) logits of one head with ``weight`` (C, D) and ``bias`` (C,) for prepared features (N, D)."""
    return x @ weight.t() + bias


class HeadStack:
    """H linear softmax heads over one feature input, as one (D, H, C) weight and an (H, C) bias."""

    def __init__(self, dim: int, num_classes: int, lrs: Sequence[float], weight_decays: Sequence[float],
                 standardizer: Standardizer | None, config: LinearConfig):
        heads = len(lrs)
        self.dim, self.num_classes, self.heads = dim, num_classes, heads
        self.config = config
        self.device = device = torch.device(config.device)
        self.lrs = torch.tensor(lrs, dtype=torch.float32, device=device).view(1, heads, 1)
        self.weight_decays = torch.tensor(weight_decays, dtype=torch.float32, device=device).view(1, heads, 1)
        self.standardizer = standardizer
        self.weight = torch.zeros(dim, heads, num_classes, device=device)
        self.bias = torch.zeros(heads, num_classes, device=device)
        self._state = [torch.zeros_like(self.weight), torch.zeros_like(self.bias)]
        if config.optimizer == "adamw":
            self._state += [torch.zeros_like(self.weight), torch.zeros_like(self.bias)]
        self.steps = 0

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Standardise with the training statistics (when they were computed)."""
        return x if self.standardizer is None else self.standardizer.apply(x)

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
        for param, grad, m, v, rate in ((self.weight, grad_weight, m_w, v_w, lr),
                                        (self.bias, grad_bias, m_b, v_b, lr[0])):
            m.mul_(beta1).add_(grad, alpha=1.0 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
            denom = (v / correction2).sqrt_().add_(1e-8)
            param.sub_(m / denom * (rate / correction1))

    def head(self, index: int) -> dict[str, np.ndarray]:
        """Tensors of one head in the saved format: weight (C, D), bias (C,), mean/std (D,)."""
        tensors = {"weight": self.weight[:, index, :].t().contiguous().cpu().numpy(),
                   "bias": self.bias[index].clone().cpu().numpy()}
        if self.standardizer is not None:
            tensors.update(self.standardizer.tensors())
        return tensors


@dataclass
class GridResult:
    """The trained stacks of every feature input."""

    inputs: list[FeatureInput]
    stacks: dict[str, HeadStack]
    steps: int = 0
    rows: np.ndarray | None = field(default=None, repr=False)


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
        standardizer = Standardizer.fit(data, feature_input, rows, config.chunk_rows) if config.standardize else None
        stacks[feature_input.name] = HeadStack(data.dim(feature_input), num_classes, lrs, wds, standardizer, config)
    names = stored_parts(inputs)
    steps_per_epoch = math.ceil(rows.size / config.batch_size)
    total = steps_per_epoch * config.epochs
    rng = np.random.default_rng(config.seed)
    step = 0
    with tqdm(total=total, desc=f"linear grid ({len(inputs)} inputs x {len(grid)} heads)", unit="step",
              disable=not progress, leave=False) as bar:
        for _ in range(config.epochs):
            for chunk in stream_chunks(data, names, rows, device=config.device, rng=rng, chunk_rows=config.chunk_rows,
                                       block_rows=config.block_rows):
                for pick in chunk.batches(config.batch_size):
                    factor = cosine_factor(step, total)
                    target = chunk.labels.index_select(0, pick)
                    losses = [stacks[fi.name].step(stacks[fi.name].prepare(fi.concat(chunk.features, pick)),
                                                   target, factor) for fi in inputs]
                    step += 1
                    bar.update(1)
                    if progress and step % 20 == 0:
                        bar.set_postfix(loss=f"{float(torch.stack(losses).min()):.3f}")
    return GridResult(list(inputs), stacks, steps=step, rows=rows)


def evaluate_grid(result: GridResult, data: ProbeData, rows: np.ndarray | None = None,
                  chunk_rows: int = DEFAULT_CHUNK_ROWS) -> dict[str, dict[str, list[float]]]:
    """{feature input: {"top1": per head, "top5": per head}} in percent on ``rows`` of ``data``."""
    names = stored_parts(result.inputs)
    counters = {fi.name: TopkCounter() for fi in result.inputs}
    widest = max(s.heads * s.num_classes for s in result.stacks.values())
    chunk_rows = max(64, min(chunk_rows, EVAL_LOGITS // widest))  # bounds the (rows, H, C) logits
    device = next(iter(result.stacks.values())).device
    with torch.no_grad():
        for chunk in stream_chunks(data, names, rows, device=device, chunk_rows=chunk_rows):
            for feature_input in result.inputs:
                stack = result.stacks[feature_input.name]
                counters[feature_input.name].add(stack.logits(stack.prepare(feature_input.concat(chunk.features))),
                                                 chunk.labels)
    return {name: counter.percent() for name, counter in counters.items()}


class LinearHead:
    """One linear softmax head: ``weight`` (C, D), ``bias`` (C,), optional standardiser; scores on ``device``."""

    def __init__(self, feature_input: FeatureInput, weight: np.ndarray, bias: np.ndarray,
                 standardizer: Standardizer | None, *, device: str = "cpu", chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 extra_meta: Mapping | None = None):
        self.feature_input = feature_input
        self.weight = np.ascontiguousarray(weight, dtype=np.float32)
        self.bias = np.ascontiguousarray(bias, dtype=np.float32)
        self.num_classes = int(self.weight.shape[0])
        self.standardizer = standardizer
        self.device = torch.device(device)
        self.chunk_rows = chunk_rows
        self.extra_meta = dict(extra_meta or {})
        self._on_device: dict = {}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C) logits for raw (N, D) features on any device (standardised here when trained so)."""
        if x.device not in self._on_device:  # moved once per device, not once per chunk
            self._on_device[x.device] = (torch.from_numpy(self.weight).to(x.device),
                                         torch.from_numpy(self.bias).to(x.device))
        weight, bias = self._on_device[x.device]
        return linear_logits(x if self.standardizer is None else self.standardizer.apply(x), weight, bias)

    def scores(self, data: ProbeData, rows: np.ndarray | None = None) -> np.ndarray:
        outputs = []
        with torch.no_grad():
            for chunk in stream_chunks(data, self.feature_input.parts, rows, device=self.device,
                                       chunk_rows=self.chunk_rows, labels=False):
                outputs.append(self.logits(self.feature_input.concat(chunk.features)).cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, self.num_classes), np.float32)

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        return torch.softmax(torch.from_numpy(np.asarray(scores, np.float32)), dim=1).numpy()

    def tensors(self) -> dict[str, np.ndarray]:
        tensors = {"weight": self.weight, "bias": self.bias}
        if self.standardizer is not None:
            tensors.update(self.standardizer.tensors())
        return tensors

    def meta(self) -> dict:
        return dict(self.extra_meta)

    @classmethod
    def from_saved(cls, meta: Mapping, tensors: Mapping[str, np.ndarray], *, device: str = "cpu") -> "LinearHead":
        feature_input = FeatureInput(tuple(meta["parts"]))
        return cls(feature_input, tensors["weight"], tensors["bias"], Standardizer.from_tensors(tensors),
                   device=device)


@register_method
class LinearMethod(GridMethod):
    """The one-pass grid of linear heads (DINOv2-style), selection on held-out training rows."""

    name: ClassVar[str] = "linear"
    summary: ClassVar[str] = "one-pass grid of softmax heads over --lrs x --weight-decays"
    hyperparameters: ClassVar[tuple[str, ...]] = ("lr", "weight_decay")

    def __init__(self, config: LinearConfig | None = None):
        self.config = config or LinearConfig()
        self._trained: GridResult | None = None

    def fit_grid(self, train: ProbeData, inputs: Sequence[FeatureInput], num_classes: int, fit_rows: np.ndarray,
                 held_rows: np.ndarray | None, *, progress: bool = True) -> list[dict]:
        scores = {}
        if held_rows is not None:
            self._trained = train_grid(train, inputs, num_classes, fit_rows, self.config, progress=progress)
            scores = evaluate_grid(self._trained, train, held_rows, self.config.chunk_rows)
        records = []
        for feature_input in inputs:
            for index, (lr, wd) in enumerate(self.config.grid):
                point = ({m: scores[feature_input.name][m][index] for m in self.metrics} if scores else None)
                records.append(record(grid_point_name(feature_input.name, lr, wd), self.name, feature_input, point,
                                      self.metrics, lr=lr, weight_decay=wd))
        return records

    def refit(self, train: ProbeData, chosen: Mapping, num_classes: int, rows: np.ndarray, *,
              progress: bool = True) -> LinearHead:
        feature_input = FeatureInput(tuple(chosen["parts"]))
        point = (chosen["lr"], chosen["weight_decay"])
        trained = self._trained
        if trained is not None and trained.rows is not None and np.array_equal(trained.rows, rows) \
                and feature_input.name in trained.stacks:
            tensors = trained.stacks[feature_input.name].head(self.config.grid.index(point))  # already fit on rows
        else:
            again = train_grid(train, [feature_input], num_classes, rows, self.config, grid=[point], progress=progress)
            tensors = again.stacks[feature_input.name].head(0)
        return LinearHead(feature_input, tensors["weight"], tensors["bias"], Standardizer.from_tensors(tensors),
                          device=self.config.device, chunk_rows=self.config.chunk_rows, extra_meta=self.settings())

    @classmethod
    def load_head(cls, meta: Mapping, tensors: Mapping[str, np.ndarray], *, device: str = "cpu", **_) -> LinearHead:
        return LinearHead.from_saved(meta, tensors, device=device)
