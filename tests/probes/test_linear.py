"""The one-pass grid of linear heads: equals heads trained one by one, and matches sklearn on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sail_vision.probes import FeatureInput, run_probe
from sail_vision.probes.data import load_arrays
from sail_vision.probes.linear import LinearConfig, evaluate_grid, grid_point_name, train_grid

PIXELS = FeatureInput(("pixels",))


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_each_grid_head_equals_the_same_head_trained_alone(optimizer):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 12)).astype(np.float32)
    y = (x[:, :3].argmax(1) + (x[:, 5] > 1)).astype(np.int64)
    data = load_arrays(x, y, name="pixels")
    config = LinearConfig(lrs=(0.001, 0.03, 0.3), weight_decays=(0.0, 0.01), optimizer=optimizer, epochs=3,
                          batch_size=32, chunk_rows=100, block_rows=25)
    rows = np.arange(300)
    grid = train_grid(data, [PIXELS], 4, rows, config, progress=False).stacks["pixels"]
    for index, point in enumerate(config.grid):
        alone = train_grid(data, [PIXELS], 4, rows, config, grid=[point], progress=False).stacks["pixels"]
        np.testing.assert_allclose(grid.head(index)["weight"], alone.head(0)["weight"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(grid.head(index)["bias"], alone.head(0)["bias"], rtol=1e-4, atol=1e-5)
    weights = [grid.head(i)["weight"] for i in range(len(config.grid))]
    assert not np.allclose(weights[0], weights[2])  # different learning rates really differ


def test_manual_gradient_matches_autograd():
    config = LinearConfig(lrs=(0.1, 0.5), weight_decays=(0.0,), momentum=0.0, standardize=False)
    from sail_vision.probes.linear import HeadStack

    rng = np.random.default_rng(1)
    stack = HeadStack(6, 3, [0.1, 0.5], [0.0, 0.0], None, None, config)
    stack.weight.normal_()
    before = stack.weight.clone()
    x = torch.from_numpy(rng.normal(size=(10, 6)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 3, 10))
    stack.step(x, labels, 1.0)
    for head, lr in enumerate((0.1, 0.5)):
        w = before[:, head, :].clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(x @ w, labels)
        loss.backward()
        np.testing.assert_allclose(stack.weight[:, head, :], (before[:, head, :] - lr * w.grad), rtol=1e-5, atol=1e-6)


def test_linear_on_digits_is_within_one_point_of_sklearn_logreg(digits_split, digits_data, tmp_path):
    from sklearn.linear_model import LogisticRegression

    x_train, x_test, y_train, y_test = digits_split
    reference = 100 * LogisticRegression(C=1.0, max_iter=5000).fit(x_train, y_train).score(x_test, y_test)
    train, val = digits_data
    result = run_probe(train, val, [PIXELS], tmp_path / "out", method="linear",
                       linear=LinearConfig(epochs=30, batch_size=64), progress=False, verbose=False)
    assert abs(result.summary["top1"] - reference) <= 1.0, (result.summary["top1"], reference)
    assert result.summary["grid_size"] == 26
    assert result.summary["chosen"] == grid_point_name("pixels", result.summary["lr"], result.summary["weight_decay"])


def test_evaluate_grid_counts_top1_and_top5():
    x = np.eye(6, dtype=np.float32)
    y = np.arange(6)
    data = load_arrays(x, y, name="pixels")
    config = LinearConfig(lrs=(1.0,), weight_decays=(0.0,), epochs=60, batch_size=6, standardize=False)
    grid = train_grid(data, [PIXELS], 6, np.arange(6), config, progress=False)
    top1, top5 = evaluate_grid(grid, data)["pixels"]
    assert top1 == [100.0] and top5 == [100.0]
    shuffled = load_arrays(x, (y + 1) % 6, name="pixels")
    top1, _ = evaluate_grid(grid, shuffled)["pixels"]
    assert top1 == [0.0]
