"""The attentive probe: AIM's attention-pooling classifier over a row's patch tokens (``--method attentive``).

The head is the structure of apple/ml-aim's ``AttentionPoolingClassifier`` (aim-v1/aim/v1/torch/layers.py,
commit bd9e068): the tokens (B, P, D) go through a BatchNorm over D without affine parameters
(eps 1e-6; batch statistics in training, running ones in evaluation), keys and values are linear maps
D -> D without bias, the queries are ``num_queries`` learned vectors (initialised N(0, 0.02²)) used as they
are, multi-head scaled dot-product attention with ``num_heads`` heads pools the tokens, the queries'
outputs are averaged, and a linear layer without bias gives the class logits. AIM builds it with the
backbone's head count and one query (aim-v1/aim/v1/torch/models.py).

Every (lr, weight decay) head of the grid is trained on the same mini-batches: each batch of tokens is
read once and used by every head (one head's activations in memory at a time), with AdamW (or SGD)
per head under a shared cosine schedule; every head starts from the same seeded initialisation.
Selection, refit, evaluation and outputs are the runner's (:func:`~.runner.run_probe`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import ProbeData
from .defaults import (DEFAULT_ATTENTION_HEADS, DEFAULT_ATTENTIVE_BATCH_SIZE, DEFAULT_ATTENTIVE_EPOCHS,
                       DEFAULT_ATTENTIVE_LRS, DEFAULT_ATTENTIVE_WEIGHT_DECAYS, DEFAULT_QUERIES)
from .errors import ProbeDataError
from .inputs import FeatureInput
from .linear import LinearConfig, cosine_factor
from .methods import GridMethod, record, register_method
from .metrics import TopkCounter
from .streaming import stream_chunks

#: BatchNorm epsilon of AIM's attention-pooling head.
BN_EPS = 1e-6
#: Standard deviation of the learned queries' initialisation (AIM's ``cls_token``).
QUERY_INIT_STD = 0.02


class AttentivePooling(nn.Module):
    """Learned queries attend over (B, P, D) tokens; their averaged outputs -> (B, C) logits."""

    def __init__(self, dim: int, num_classes: int, num_heads: int = DEFAULT_ATTENTION_HEADS,
                 num_queries: int = DEFAULT_QUERIES, batch_norm: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ProbeDataError(f"--attention-heads {num_heads} does not divide the feature width {dim}")
        self.num_heads, self.num_queries = int(num_heads), int(num_queries)
        self.bn = nn.BatchNorm1d(dim, affine=False, eps=BN_EPS) if batch_norm else nn.Identity()
        self.query = nn.Parameter(torch.randn(1, num_queries, dim) * QUERY_INIT_STD)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.linear = nn.Linear(dim, num_classes, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        b, p, d = tokens.shape
        h = self.num_heads
        x = self.bn(tokens.transpose(1, 2)).transpose(1, 2)
        q = self.query.expand(b, -1, -1).reshape(b, self.num_queries, h, d // h).transpose(1, 2)
        k = self.k(x).reshape(b, p, h, d // h).transpose(1, 2)
        v = self.v(x).reshape(b, p, h, d // h).transpose(1, 2)
        pooled = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, self.num_queries, d)
        return self.linear(pooled.mean(dim=1))


@dataclass
class AttentiveConfig(LinearConfig):
    """Settings of the attentive grid (``standardize`` does not apply: the head has its own BatchNorm)."""

    lrs: Sequence[float] = DEFAULT_ATTENTIVE_LRS
    weight_decays: Sequence[float] = DEFAULT_ATTENTIVE_WEIGHT_DECAYS
    optimizer: str = "adamw"
    epochs: int = DEFAULT_ATTENTIVE_EPOCHS
    batch_size: int = DEFAULT_ATTENTIVE_BATCH_SIZE
    num_heads: int = DEFAULT_ATTENTION_HEADS
    num_queries: int = DEFAULT_QUERIES
    batch_norm: bool = True
    standardize: bool = False

    def check(self) -> None:
        super().check()
        if self.num_heads < 1 or self.num_queries < 1:
            raise ProbeDataError(f"--attention-heads and --queries must be >= 1, got {self.num_heads} and "
                                 f"{self.num_queries}")

    def build(self, dim: int, num_classes: int) -> AttentivePooling:
        """One head, initialised from ``seed`` (the same for every grid point), on the device."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(self.seed))
            module = AttentivePooling(dim, num_classes, self.num_heads, self.num_queries, self.batch_norm)
        return module.to(self.device)


def point_name(feature: str, lr: float, weight_decay: float) -> str:
    return f"attentive_{feature}_lr{lr:.3g}_wd{weight_decay:.3g}"


def train_heads(data: ProbeData, feature_input: FeatureInput, num_classes: int, rows: np.ndarray,
                config: AttentiveConfig, grid: Sequence[tuple[float, float]], *,
                progress: bool = True) -> list[AttentivePooling]:
    """One head per (lr, weight decay) of ``grid`` trained on ``rows``; each batch is read once for all."""
    from tqdm.auto import tqdm

    heads = [config.build(data.dim(feature_input), num_classes) for _ in grid]
    groups = [{"params": list(h.parameters()), "lr": lr, "weight_decay": wd, "initial_lr": lr}
              for h, (lr, wd) in zip(heads, grid)]
    if config.optimizer == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=grid[0][0], betas=tuple(config.betas))
    else:
        optimizer = torch.optim.SGD(groups, lr=grid[0][0], momentum=config.momentum)
    total = math.ceil(rows.size / config.batch_size) * config.epochs
    rng = np.random.default_rng(config.seed)
    step = 0
    for head in heads:
        head.train()
    with tqdm(total=total, desc=f"attentive grid ({feature_input.name} x {len(grid)} heads)", unit="step",
              disable=not progress, leave=False) as bar:
        for _ in range(config.epochs):
            for chunk in stream_chunks(data, feature_input.parts, rows, device=config.device, rng=rng,
                                       chunk_rows=config.chunk_rows, block_rows=config.block_rows):
                for pick in chunk.batches(config.batch_size):
                    factor = cosine_factor(step, total)
                    for group in optimizer.param_groups:
                        group["lr"] = group["initial_lr"] * factor
                    tokens = feature_input.concat(chunk.features, pick)
                    target = chunk.labels.index_select(0, pick)
                    optimizer.zero_grad(set_to_none=True)
                    with torch.enable_grad():
                        for head in heads:  # separate graphs: one head's activations alive at a time
                            F.cross_entropy(head(tokens), target).backward()
                    optimizer.step()
                    step += 1
                    bar.update(1)
    for head in heads:
        head.eval()
    return heads


def head_logits(heads: Sequence[AttentivePooling], data: ProbeData, feature_input: FeatureInput,
                rows: np.ndarray | None, device, chunk_rows: int, counter: TopkCounter | None = None):
    """(rows, H, C) logits of every head (eval mode), or, with ``counter``, only its top-k counts."""
    outputs = []
    with torch.no_grad():
        for chunk in stream_chunks(data, feature_input.parts, rows, device=device, chunk_rows=chunk_rows,
                                   labels=counter is not None):
            tokens = feature_input.concat(chunk.features)
            logits = torch.stack([h(tokens) for h in heads], dim=1)
            if counter is not None:
                counter.add(logits, chunk.labels)
            else:
                outputs.append(logits.cpu().numpy())
    return counter if counter is not None else np.concatenate(outputs)


class AttentiveHead:
    """The chosen attentive head: scores rows of (rows, P, D) tokens; saved as its module's state."""

    def __init__(self, feature_input: FeatureInput, module: AttentivePooling, settings: Mapping, *,
                 device: str = "cpu", chunk_rows: int = 1024):
        self.feature_input = feature_input
        self.module = module.to(device).eval()
        self.num_classes = int(module.linear.out_features)
        self.settings = dict(settings)
        self.device, self.chunk_rows = torch.device(device), int(chunk_rows)

    def scores(self, data: ProbeData, rows: np.ndarray | None = None) -> np.ndarray:
        return head_logits([self.module], data, self.feature_input, rows, self.device, self.chunk_rows)[:, 0]

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        return torch.softmax(torch.from_numpy(np.asarray(scores, np.float32)), dim=1).numpy()

    def tensors(self) -> dict[str, np.ndarray]:
        return {k: v.detach().cpu().numpy().copy() for k, v in self.module.state_dict().items()}

    def meta(self) -> dict:
        return dict(self.settings)


@register_method
class AttentiveMethod(GridMethod):
    """AIM's attention-pooling head over patch tokens, an lr x weight-decay grid trained in one pass."""

    name: ClassVar[str] = "attentive"
    summary: ClassVar[str] = ("AIM's attentive probe (learned query, multi-head cross-attention over patch tokens, "
                              "linear) over --lrs x --weight-decays")
    hyperparameters: ClassVar[tuple[str, ...]] = ("lr", "weight_decay")
    tokens: ClassVar[bool] = True

    def __init__(self, config: AttentiveConfig | None = None):
        self.config = config or AttentiveConfig()
        self._trained: tuple[str, np.ndarray, list[AttentivePooling]] | None = None

    def fit_grid(self, train: ProbeData, inputs: Sequence[FeatureInput], num_classes: int, fit_rows: np.ndarray,
                 held_rows: np.ndarray | None, *, progress: bool = True) -> list[dict]:
        records = []
        for feature_input in inputs:
            scores = None
            if held_rows is not None:
                heads = train_heads(train, feature_input, num_classes, fit_rows, self.config, self.config.grid,
                                    progress=progress)
                scores = head_logits(heads, train, feature_input, held_rows, self.config.device,
                                     self.config.chunk_rows, TopkCounter()).percent()
                self._trained = (feature_input.name, fit_rows, heads)
            for index, (lr, wd) in enumerate(self.config.grid):
                point = None if scores is None else {m: scores[m][index] for m in self.metrics}
                records.append(record(point_name(feature_input.name, lr, wd), self.name, feature_input, point,
                                      self.metrics, lr=lr, weight_decay=wd))
        return records

    def refit(self, train: ProbeData, chosen: Mapping, num_classes: int, rows: np.ndarray, *,
              progress: bool = True) -> AttentiveHead:
        feature_input = FeatureInput(tuple(chosen["parts"]))
        point = (chosen["lr"], chosen["weight_decay"])
        kept = self._trained
        if kept is not None and kept[0] == feature_input.name and np.array_equal(kept[1], rows):
            module = kept[2][self.config.grid.index(point)]
        else:
            module = train_heads(train, feature_input, num_classes, rows, self.config, [point], progress=progress)[0]
        return AttentiveHead(feature_input, module, self.settings(), device=self.config.device,
                             chunk_rows=self.config.chunk_rows)

    def settings(self) -> dict:
        c = self.config
        return {**super().settings(), "attention_heads": c.num_heads, "queries": c.num_queries, "batch_norm": c.batch_norm,
                "head": "apple/ml-aim AttentionPoolingClassifier (aim-v1/aim/v1/torch/layers.py)"}

    @classmethod
    def load_head(cls, meta: Mapping, tensors: Mapping[str, np.ndarray], *, device: str = "cpu",
                  **_) -> AttentiveHead:
        module = AttentivePooling(int(meta["dim"]), int(meta["num_classes"]), int(meta["attention_heads"]),
                                  int(meta["queries"]), bool(meta["batch_norm"]))
        shapes = {k: v.shape for k, v in module.state_dict().items()}  # safetensors keeps 0-d values as (1,)
        module.load_state_dict({k: torch.from_numpy(np.asarray(v)).reshape(shapes.get(k, np.shape(v)))
                                for k, v in tensors.items()}, strict=True)
        return AttentiveHead(FeatureInput(tuple(meta["parts"])), module, {k: meta[k] for k in (
            "optimizer", "epochs", "batch_size", "device", "attention_heads", "queries", "batch_norm", "head")},
            device=device)
