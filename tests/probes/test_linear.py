"""The one-pass grid of linear heads: equals heads trained one by one, and matches sklearn on digits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sail_vision.probes import FeatureInput, run_probe
from sail_vision.probes.data import load_arrays
from sail_vision.probes.linear import HeadStack, LinearConfig, LinearMethod, evaluate_grid, grid_point_name, train_grid

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
    rng = np.random.default_rng(1)
    stack = HeadStack(6, 3, [0.1, 0.5], [0.0, 0.0], None, config)
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
    scores = evaluate_grid(grid, data)["pixels"]
    assert scores["top1"] == [100.0] and scores["top5"] == [100.0]
    shuffled = load_arrays(x, (y + 1) % 6, name="pixels")
    assert evaluate_grid(grid, shuffled)["pixels"]["top1"] == [0.0]


def test_no_refit_keeps_the_grid_head_and_refit_trains_again_on_all_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    data = load_arrays(x, y, name="pixels")
    method = LinearMethod(LinearConfig(lrs=(0.01, 0.1), weight_decays=(0.0,), epochs=2, batch_size=32))
    fit, held = np.arange(150), np.arange(150, 200)
    records = method.fit_grid(data, [PIXELS], 2, fit, held, progress=False)
    assert [r["name"] for r in records] == ["linear_pixels_lr0.01_wd0", "linear_pixels_lr0.1_wd0"]
    kept = method.refit(data, records[1], 2, fit, progress=False)
    grid_head = method._trained.stacks["pixels"].head(1)
    np.testing.assert_array_equal(kept.weight, grid_head["weight"])
    again = method.refit(data, records[1], 2, np.arange(200), progress=False)
    alone = train_grid(data, [PIXELS], 2, np.arange(200), method.config, grid=[(0.1, 0.0)], progress=False)
    np.testing.assert_array_equal(again.weight, alone.stacks["pixels"].head(0)["weight"])
    assert not np.array_equal(again.weight, kept.weight)


@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_grid_on_cuda_matches_the_cpu_grid(optimizer, cuda_device, tmp_path):
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.normal(size=(3000, 64)).astype(np.float16))
    labels = rng.integers(0, 10, 3000)
    data = load_arrays(tmp_path / "x.npy", labels, name="pixels")
    config = LinearConfig(lrs=(0.001, 0.01, 0.1), weight_decays=(0.0, 1e-3), optimizer=optimizer, epochs=2,
                          batch_size=128, chunk_rows=1000, block_rows=100)
    cpu = train_grid(data, [PIXELS], 10, np.arange(3000), config, progress=False)
    config.device = str(cuda_device)
    gpu = train_grid(data, [PIXELS], 10, np.arange(3000), config, progress=False)
    assert gpu.stacks["pixels"].weight.device.type == "cuda" and gpu.steps == cpu.steps
    torch.testing.assert_close(gpu.stacks["pixels"].weight.cpu(), cpu.stacks["pixels"].weight, rtol=1e-3, atol=1e-4)
    on_gpu = evaluate_grid(gpu, data)["pixels"]["top1"]
    on_cpu = evaluate_grid(cpu, data)["pixels"]["top1"]
    assert np.allclose(on_gpu, on_cpu, atol=0.2)
