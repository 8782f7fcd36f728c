"""What the dense-prediction probe methods (segmentation, depth) share: a grid of heads trained on patch maps
of whole images, split for the hold-out by source image so that an image's augmented views stay together."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .data import split_holdout
from .inputs import FeatureInput


class DenseGridMethod:
    """Base of the registered dense methods; subclasses set ``config_class`` (a config with ``check()`` and
    ``grid``) and the runner's class attributes (``name``, ``task``, ...)."""

    config_class: type

    def __init__(self, config=None):
        self.config = config or self.config_class()
        self._trained = None
        self._evaluation = None

    def check(self) -> None:
        self.config.check()

    def grid_size(self, inputs: Sequence[FeatureInput]) -> int:
        return len(inputs) * len(self.config.grid)

    def holdout_split(self, train, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """Split source images, not rows: an image's augmented views stay on one side."""
        groups = train.image_groups()
        fit_groups, held_groups = split_holdout(np.zeros(int(groups.max()) + 1, np.int64), fraction, seed)
        return np.flatnonzero(np.isin(groups, fit_groups)), np.flatnonzero(np.isin(groups, held_groups))
