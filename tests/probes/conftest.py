"""Shared probe fixtures: scikit-learn's digits (real 8x8 images) split 70/30, as arrays and feature folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sail_vision.feature_store import write_feature_dir
from sail_vision.probes import load_arrays

SPLIT_SEED = 0


@pytest.fixture(scope="session")
def digits_split():
    """(x_train, x_test, y_train, y_test): raw pixels as float32, 70/30 with a fixed seed."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    return train_test_split(x.astype(np.float32), y, test_size=0.3, random_state=SPLIT_SEED)


@pytest.fixture(scope="session")
def digits_data(digits_split):
    """(train, val) ProbeData of the digits split; the feature is called ``pixels``."""
    x_train, x_test, y_train, y_test = digits_split
    return load_arrays(x_train, y_train, name="pixels"), load_arrays(x_test, y_test, name="pixels")


def write_digits_dirs(root: Path, digits_split, extra_noise_feature: bool = True) -> tuple[Path, Path]:
    """Write the digits split as two feature folders (layer-4_mean = pixels, layer-4_end = noisy pixels,
    layer-3_end = the first 32 pixels), float16 like `sail-vision extract`."""
    x_train, x_test, y_train, y_test = digits_split
    rng = np.random.default_rng(1)
    out = []
    for name, x, y in (("train", x_train, y_train), ("val", x_test, y_test)):
        features = {"layer-4_mean": x.astype(np.float16), "layer-3_end": x[:, :32].astype(np.float16)}
        if extra_noise_feature:
            features["layer-4_end"] = (x + rng.normal(0, 4, x.shape)).astype(np.float16)
        write_feature_dir(root / name, features, labels=y, classes=[str(i) for i in range(10)])
        out.append(root / name)
    return out[0], out[1]


@pytest.fixture(scope="session")
def digits_dirs(tmp_path_factory, digits_split) -> tuple[Path, Path]:
    return write_digits_dirs(tmp_path_factory.mktemp("digits"), digits_split)
