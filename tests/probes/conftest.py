"""Shared probe fixtures: scikit-learn's digits (real 8x8 images) split 70/30, as arrays and feature folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sail_vision.feature_store import write_feature_dir
from sail_vision.probes import load_arrays

SPLIT_SEED = 0
#: What `sail-vision extract` records about the model and the preprocessing (used by --predict's checks).
PROVENANCE = {"checkpoint": {"path": "/models/SAIL-7B", "weights_digest": "0123456789abcdef",
                             "config_fingerprint": "fedcba9876543210"},
              "preprocessing": {"resolution": 224, "max_tokens": 4096, "patch_size": 32, "norm": False},
              "dtypes": {"compute": "bfloat16", "save": "float16"}}


def write_features(path: Path, features: dict, *, checkpoint: dict | None = None, preprocessing: dict | None = None,
                   **kwargs):
    """A feature folder like `sail-vision extract` writes, with the default PROVENANCE unless overridden."""
    return write_feature_dir(path, features, checkpoint={**PROVENANCE["checkpoint"], **(checkpoint or {})},
                             preprocessing={**PROVENANCE["preprocessing"], **(preprocessing or {})},
                             dtypes=PROVENANCE["dtypes"], **kwargs)


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


DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def write_digits_dirs(root: Path, digits_split, extra_noise_feature: bool = True) -> tuple[Path, Path]:
    """Write the digits split as two feature folders (layer-4_mean = pixels, layer-4_end = noisy pixels,
    layer-3_end = the first 32 pixels), float16 like `sail-vision extract`, classes named zero..nine,
    paths digit_<split>_<i>.png."""
    x_train, x_test, y_train, y_test = digits_split
    rng = np.random.default_rng(1)
    out = []
    for name, x, y in (("train", x_train, y_train), ("val", x_test, y_test)):
        features = {"layer-4_mean": x.astype(np.float16), "layer-3_end": x[:, :32].astype(np.float16)}
        if extra_noise_feature:
            features["layer-4_end"] = (x + rng.normal(0, 4, x.shape)).astype(np.float16)
        write_features(root / name, features, labels=y, classes=DIGIT_NAMES,
                       paths=[f"/data/{name}/digit_{name}_{i}.png" for i in range(len(y))])
        out.append(root / name)
    return out[0], out[1]


@pytest.fixture(scope="session")
def digits_dirs(tmp_path_factory, digits_split) -> tuple[Path, Path]:
    return write_digits_dirs(tmp_path_factory.mktemp("digits"), digits_split)


@pytest.fixture
def cuda_device():
    """The first CUDA device; the test is skipped on machines without one."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    return torch.device("cuda", 0)


@pytest.fixture(scope="session")
def feature_folder():
    """feature_folder(path, features, checkpoint=..., preprocessing=..., **write_feature_dir kwargs)."""
    return write_features
