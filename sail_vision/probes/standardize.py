"""The one standardiser of the probes: per-dimension mean and std of the training rows.

Every path that standardises (the linear grid, logreg with ``--standardize``, a saved head predicting,
the mmengine classifier) computes ``(x - mean) * inv_std`` with ``inv_std = 1 / std`` in float32, so
a head sees exactly the same numbers when it is trained and when it predicts. The statistics of a
concatenated input are those of its parts, concatenated (each part's are computed once).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .data import ProbeData, feature_stats
from .defaults import DEFAULT_CHUNK_ROWS
from .inputs import FeatureInput


def standardize(x, mean, inv_std):
    """``(x - mean) * inv_std`` for numpy arrays or torch tensors (the one formula every path uses)."""
    return (x - mean) * inv_std


@dataclass
class Standardizer:
    """Mean and std (float32, (D,)) of a feature input's training rows; ``apply`` standardises."""

    mean: np.ndarray
    std: np.ndarray

    def __post_init__(self):
        self.mean = np.ascontiguousarray(self.mean, dtype=np.float32)
        self.std = np.ascontiguousarray(self.std, dtype=np.float32)
        self.inv_std = (np.float32(1.0) / self.std).astype(np.float32)
        self._torch: dict = {}

    @classmethod
    def fit(cls, data: ProbeData, feature_input: FeatureInput, rows: np.ndarray | None = None,
            chunk_rows: int = DEFAULT_CHUNK_ROWS) -> "Standardizer":
        """Statistics of ``rows`` (default: all) of ``data``, read in chunks; constant dimensions get std 1."""
        stats = [feature_stats(data, part, rows, chunk_rows) for part in feature_input.parts]
        return cls(np.concatenate([s[0] for s in stats]), np.concatenate([s[1] for s in stats]))

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def apply(self, x):
        """Standardise (N, D) numpy rows or torch rows (on any device)."""
        if isinstance(x, np.ndarray):
            return standardize(x, self.mean, self.inv_std)
        key = (x.device, x.dtype)
        if key not in self._torch:
            import torch

            self._torch[key] = (torch.from_numpy(self.mean).to(x.device, x.dtype),
                                torch.from_numpy(self.inv_std).to(x.device, x.dtype))
        mean, inv_std = self._torch[key]
        return standardize(x, mean, inv_std)

    def tensors(self) -> dict[str, np.ndarray]:
        """The saved form: ``mean`` and ``std``."""
        return {"mean": self.mean, "std": self.std}

    @classmethod
    def from_tensors(cls, tensors: Mapping) -> "Standardizer | None":
        """The standardiser saved in a head's tensors, or None when the head was trained without one."""
        if "mean" not in tensors:
            return None
        return cls(np.asarray(tensors["mean"]), np.asarray(tensors["std"]))
