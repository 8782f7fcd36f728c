"""Training and evaluating the segmentation grid: every (feature input, lr, weight decay) head on the same
batches, each batch read once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from .inputs import FeatureInput, stored_parts
from .linear import LinearConfig, cosine_factor
from .seg_data import SegmentationData, batches, patch_statistics, size_batches
from .seg_heads import BatchNormHeads, SegHeadStack, SegmentationConfig
from .seg_metrics import confusion_counts, head_histograms
from .standardize import Standardizer


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
    stats = patch_statistics(data, stored_parts(inputs), rows, config.device, config.batch_size)
    return {fi.name: Standardizer(np.concatenate([stats[p][0] for p in fi.parts]),
                                  np.concatenate([stats[p][1] for p in fi.parts])) for fi in inputs}


def train_seg_grid(data: SegmentationData, inputs: Sequence[FeatureInput], rows: np.ndarray,
                   config: SegmentationConfig, *, grid: Sequence[tuple[float, float]] | None = None,
                   progress: bool = True, plans: Sequence[Sequence[np.ndarray]] | None = None,
                   make_stack=None, what: str = "segmentation") -> SegGrid:
    """Train every (feature input, lr, weight decay) head on the images ``rows``, one read per batch.

    ``plans`` (one list of batches of rows per epoch) replaces the seeded shuffled batches; the
    result's ``losses`` holds every step's {input: (H,) losses before the step}. ``make_stack(dim, lrs,
    weight_decays, standardizer)`` builds each input's heads in place of :class:`SegHeadStack` (the depth
    probe's); ``what`` names the grid in the progress bar."""
    from tqdm.auto import tqdm

    config.check()
    grid = list(grid or config.grid)
    lrs, wds = [lr for lr, _ in grid], [wd for _, wd in grid]
    if make_stack is not None:
        standardizers = _standardizers(data, inputs, rows, config)
        stacks = {fi.name: make_stack(sum(data.dims(fi.parts)), lrs, wds, standardizers[fi.name]) for fi in inputs}
    elif config.bn == "batch":
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
    with tqdm(total=total, desc=f"{what} grid ({len(inputs)} inputs x {len(grid)} heads)", unit="step",
              disable=not progress, leave=False) as bar:
        for plan in plans:
            for batch in batches(data, plan, parts, config.device):
                factor = cosine_factor(step, total)
                losses = []
                recorded = {}
                for fi in inputs:
                    stack = stacks[fi.name]
                    loss = stack.seg_step(stack.prepare(fi.concat(batch.features)), batch.shape, batch.masks, factor,
                                          config.max_logits, batch.valid)
                    if loss is not None:
                        losses.append(loss)
                        recorded[fi.name] = loss  # stays on the device: no host sync per step
                step_losses.append(recorded)
                step += 1
                bar.update(1)
                if progress and losses and step % 10 == 0:
                    bar.set_postfix(loss=f"{float(torch.stack(losses).min()):.3f}")
    host = {}  # after training: one copy to the host per input, not one per step
    for fi in inputs:
        recorded = [rec[fi.name] for rec in step_losses if fi.name in rec]
        host[fi.name] = iter(torch.stack(recorded).cpu().numpy()) if recorded else iter(())
    step_losses = [{k: next(host[k]) for k in rec} for rec in step_losses]
    return SegGrid(list(inputs), stacks, np.asarray(rows), step, step_losses)


@dataclass
class SegEvaluation:
    """Summed (H, 3, C) histograms per feature input, and the first images' predictions of head 0."""

    hists: dict[str, np.ndarray]
    shown: list[tuple[int, np.ndarray, np.ndarray]] = field(default_factory=list)
    #: (C, C) confusion counts of the first input's first head (with ``confusion=True``).
    confusion: np.ndarray | None = None


def evaluate_seg_stacks(stacks: Mapping[str, SegHeadStack], inputs: Sequence[FeatureInput], data: SegmentationData,
                        rows: np.ndarray, config: SegmentationConfig, *, keep: int = 0,
                        confusion: bool = False) -> SegEvaluation:
    """Histograms of every head of every input over ``rows`` (read once, in order, batched by size)."""
    parts = stored_parts(inputs)
    plan = size_batches(rows, data.grids(), config.batch_size, None)
    hists = {fi.name: torch.zeros(stacks[fi.name].heads, 3, data.num_classes, dtype=torch.int64,
                                  device=stacks[fi.name].device) for fi in inputs}
    shown = []
    counts = None
    if confusion:
        counts = torch.zeros(data.num_classes, data.num_classes, dtype=torch.int64, device=stacks[inputs[0].name].device)
    with torch.no_grad():
        for batch in batches(data, plan, parts, config.device):
            size = tuple(batch.masks.shape[1:])
            for fi in inputs:
                stack = stacks[fi.name]
                pred = stack.predictions(stack.prepare(fi.concat(batch.features)), batch.shape, size,
                                         config.max_logits)
                hists[fi.name] += head_histograms(pred.reshape(stack.heads, -1), batch.masks, data.num_classes)
                if fi is inputs[0] and counts is not None:
                    counts += confusion_counts(pred[0], batch.masks, data.num_classes)
                if fi is inputs[0] and len(shown) < keep:
                    for i, row in enumerate(batch.rows[:keep - len(shown)]):
                        shown.append((int(row), pred[0, i].cpu().numpy().astype(np.uint8),
                                      batch.masks[i].cpu().numpy().astype(np.uint8)))
    return SegEvaluation({k: v.cpu().numpy() for k, v in hists.items()}, shown,
                         None if counts is None else counts.cpu().numpy())

