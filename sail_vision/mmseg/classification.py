"""The classification probe under mmengine's Runner, registered in mmseg's registries.

Importing ``sail_vision.mmseg`` (configs do it with ``custom_imports``) registers:

- ``LinearProbeClassifier`` (MODELS): one linear softmax head, optionally standardising its input
  with statistics computed from the training feature folder (kept as buffers in checkpoints);
- ``ExtractedFeatureDataset`` (DATASETS): rows of a `sail-vision extract` folder (one stored
  feature or several concatenated) with their labels, optionally renumbered by class name to
  another folder's classes (``classes_from``);
- ``ProbeAccuracy`` (METRICS): top-1 / top-5 accuracy in percent.

Reading, labels, standardisation and the top-k metric are those of :mod:`sail_vision.probes`;
this module only adapts them to mmengine. Then ``python tools/train.py configs/probes/<config>.py``
trains, checkpoints, resumes and evaluates the probe like any mmseg model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import nn

from ..probes.data import check_finite, load_feature_dir
from ..probes.labels import align_classes
from ..probes.errors import ProbeDataError
from ..probes.inputs import FeatureInput
from ..probes.metrics import accuracy_percent, topk_correct
from ..probes.standardize import Standardizer, standardize
from .compat import ensure_mmseg

ensure_mmseg()
from mmengine.evaluator import BaseMetric  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from mmseg.registry import DATASETS, METRICS, MODELS  # noqa: E402


def _feature_input(features: str | Sequence[str]) -> FeatureInput:
    parts = tuple(p for p in features.split("+") if p) if isinstance(features, str) else tuple(features)
    return FeatureInput(parts)


def _resolve(root: str | None, path: str) -> str:
    return str(Path(root) / path) if root and not Path(path).is_absolute() else str(path)


@DATASETS.register_module()
class ExtractedFeatureDataset(torch.utils.data.Dataset):
    """Rows of an extraction output folder: ``{"inputs": (D,) float32, "data_samples": {"gt_label": int}}``.

    ``feature_dir`` (relative to ``data_root`` when given) is the folder; ``features`` one name or
    several (list or ``a+b``) concatenated; labels come from the folder, from ``labels_file`` (.npy)
    or from file names through ``label_pattern``. ``classes_from`` (another folder, usually the
    training one) renumbers the labels to that folder's classes by name, refusing unknown classes.
    """

    def __init__(self, feature_dir: str, features: str | Sequence[str], data_root: str | None = None,
                 labels_file: str | None = None, label_pattern: str | None = None, classes_from: str | None = None):
        self.feature_dir = _resolve(data_root, feature_dir)
        self.feature_input = _feature_input(features)
        self.data = load_feature_dir(self.feature_dir, self.feature_input.parts,
                                     labels=_resolve(data_root, labels_file) if labels_file else None,
                                     label_pattern=label_pattern)
        if self.data.labels is None:
            raise ProbeDataError(f"{self.feature_dir}: no labels; set labels_file or label_pattern in the dataset "
                                 f"config")
        if classes_from is not None:
            reference = load_feature_dir(_resolve(data_root, classes_from), self.feature_input.parts,
                                         label_pattern=label_pattern)
            if reference.labels is None:
                raise ProbeDataError(f"classes_from {reference.source}: that folder has no labels to take classes from")
            self.data = align_classes(reference, self.data)
        check_finite(self.data, self.feature_input.parts)
        names = self.data.classes or [str(i) for i in range(int(self.data.labels.max()) + 1)]
        self.metainfo = {"classes": tuple(names)}

    def __len__(self) -> int:
        return self.data.num_rows

    def __getitem__(self, index: int) -> dict:
        row = self.data.gather(self.feature_input, np.asarray([index]))[0]
        return {"inputs": torch.from_numpy(row), "data_samples": {"gt_label": int(self.data.labels[index])}}


def _stack_inputs(inputs) -> torch.Tensor:
    return torch.stack(list(inputs)) if isinstance(inputs, (list, tuple)) else inputs


def _labels(data_samples, device) -> torch.Tensor:
    if isinstance(data_samples, dict):  # default_collate
        return torch.as_tensor(data_samples["gt_label"], device=device).long()
    return torch.as_tensor([int(s["gt_label"]) for s in data_samples], device=device).long()


@MODELS.register_module()
class LinearProbeClassifier(BaseModel):
    """A linear softmax head on extracted features (the ``linear`` method of ``sail-vision probe``).

    ``in_dim`` may be left out when ``stats_from`` names the training feature folder; with
    ``standardize`` the input is standardised with that folder's per-dimension mean and std
    (the probes' one standardiser, kept as ``mean`` / ``std`` buffers in checkpoints).
    """

    def __init__(self, num_classes: int, in_dim: int | None = None, features: str | Sequence[str] | None = None,
                 stats_from: str | None = None, data_root: str | None = None, standardize: bool = True,
                 data_preprocessor: dict | None = None, init_cfg: dict | None = None):
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        standardizer = None
        if stats_from is not None:
            if features is None:
                raise ProbeDataError("LinearProbeClassifier: stats_from needs features (the names to read)")
            feature_input = _feature_input(features)
            data = load_feature_dir(_resolve(data_root, stats_from), feature_input.parts)
            in_dim = data.dim(feature_input)
            if standardize:
                standardizer = Standardizer.fit(data, feature_input)
        if in_dim is None:
            raise ProbeDataError("LinearProbeClassifier needs in_dim, or stats_from (the training feature folder)")
        in_dim = int(in_dim)
        self.fc = nn.Linear(in_dim, int(num_classes))
        nn.init.zeros_(self.fc.weight)
        nn.init.zeros_(self.fc.bias)
        if standardizer is None:
            standardizer = Standardizer(np.zeros(in_dim, np.float32), np.ones(in_dim, np.float32))
        self.register_buffer("mean", torch.from_numpy(standardizer.mean))
        self.register_buffer("std", torch.from_numpy(standardizer.std))
        self.loss_fn = nn.CrossEntropyLoss()

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.fc(standardize(inputs.float(), self.mean, 1.0 / self.std))

    def forward(self, inputs, data_samples=None, mode: str = "tensor"):
        logits = self.logits(_stack_inputs(inputs))
        if mode == "tensor":
            return logits
        if mode == "loss":
            return {"loss": self.loss_fn(logits, _labels(data_samples, logits.device))}
        if mode == "predict":
            labels = _labels(data_samples, logits.device) if data_samples is not None else None
            return [{"pred_score": logits[i].detach(), "pred_label": int(logits[i].argmax()),
                     "gt_label": None if labels is None else int(labels[i])} for i in range(logits.shape[0])]
        raise ValueError(f"unknown mode {mode!r}; use 'tensor', 'loss' or 'predict'")


@METRICS.register_module()
class ProbeAccuracy(BaseMetric):
    """Top-k accuracy (percent) of ``LinearProbeClassifier`` predictions: ``top1``, ``top5``."""

    default_prefix = "probe"

    def __init__(self, topk: Sequence[int] = (1, 5), collect_device: str = "cpu", prefix: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        self.topk = tuple(int(k) for k in topk)

    def process(self, data_batch, data_samples: Sequence[dict]) -> None:
        if not data_samples:
            return
        scores = torch.stack([sample["pred_score"].float().cpu() for sample in data_samples])
        labels = torch.tensor([int(sample["gt_label"]) for sample in data_samples])
        hits = topk_correct(scores, labels, self.topk)
        self.results.append({"rows": len(data_samples), **{k: int(hits[k]) for k in self.topk}})

    def compute_metrics(self, results: list) -> dict:
        total = sum(r["rows"] for r in results)
        return {f"top{k}": accuracy_percent(sum(r[k] for r in results), total) for k in self.topk} if total else {}
