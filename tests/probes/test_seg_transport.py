"""The segmentation probe's batches use the probes' streaming transport: stored dtypes on the host (float16
features, uint8 masks), pinned buffers and a side-stream copy that overlaps compute on CUDA, conversion on
the device, no host sync per training step, statistics computed on the device. Proven on the CPU with
counters and a fake CUDA transport."""

from __future__ import annotations

import numpy as np
import torch

from sail_vision.probes import FeatureInput
from sail_vision.probes.seg_data import batches, patch_statistics, read_batch, size_batches
from sail_vision.probes.seg_heads import SegmentationConfig
from sail_vision.probes.seg_train import train_seg_grid
from sail_vision.probes.streaming import uploaded_ahead

from .test_segmentation import IGNORE_INDEX, make_store, seg_data


def test_host_batches_keep_stored_dtypes_and_count_labelled_pixels_there():
    store = make_store(num_images=4)
    host = read_batch(seg_data(store), np.array([0, 2]), ["layer-1_patch"])
    assert host["f:layer-1_patch"].dtype == torch.float16 and host["m:masks"].dtype == torch.uint8
    masks = np.stack([store.masks[0], store.masks[2]])
    assert host["valid"] == int((masks != IGNORE_INDEX).sum())


def test_read_batch_pins_every_tensor_for_cuda(monkeypatch):
    pinned = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: pinned.append(self.dtype) or self)
    read_batch(seg_data(make_store(num_images=4)), np.array([0, 2]), ["layer-1_patch", "layer-2_patch"], pin=True)
    assert sorted(map(str, pinned)) == ["torch.float16", "torch.float16", "torch.uint8"]


def test_batches_arrive_as_float32_and_int64_on_the_device():
    data = seg_data(make_store(num_images=6))
    plan = size_batches(np.arange(6), data.grids(), 2, None)
    got = list(batches(data, plan, ["layer-1_patch"], "cpu"))
    assert len(got) == len(plan)
    for batch in got:
        assert batch.features["layer-1_patch"].dtype == torch.float32 and batch.masks.dtype == torch.int64
        assert batch.valid == int((batch.masks != IGNORE_INDEX).sum())


def test_the_next_copy_starts_before_the_current_batch_is_used():
    events = []

    class FakeCuda:
        cuda = True

        def upload(self, host):
            events.append(("upload", host))
            return host, None

        def finish(self, moved, event):
            events.append(("ready", moved))
            return moved

    for key, _ in uploaded_ahead(((k, k) for k in "abc"), FakeCuda()):
        events.append(("use", key))
    assert events == [("upload", "a"), ("upload", "b"), ("ready", "a"), ("use", "a"), ("upload", "c"),
                      ("ready", "b"), ("use", "b"), ("ready", "c"), ("use", "c")]


def count_syncs(monkeypatch, run) -> int:
    """Calls that copy a device value to the host (each a sync on CUDA) while ``run`` runs."""
    calls = []
    for name in ("cpu", "item", "tolist", "__int__", "__float__", "__bool__"):
        original = getattr(torch.Tensor, name)
        monkeypatch.setattr(torch.Tensor, name,
                            lambda self, *a, _o=original, _n=name, **k: (calls.append(_n), _o(self, *a, **k))[1])
    run()
    monkeypatch.undo()
    return len(calls)


def test_no_host_sync_per_training_step(monkeypatch):
    data = seg_data(make_store(num_images=8))
    inputs = [FeatureInput(("layer-1_patch",)), FeatureInput(("layer-2_patch",))]
    for bn in ("fixed", "batch"):
        counts = []
        for epochs in (1, 4):
            config = SegmentationConfig(lrs=(0.1, 1.0), weight_decays=(0.0,), epochs=epochs, batch_size=2, bn=bn)
            grid = []
            counts.append(count_syncs(monkeypatch, lambda: grid.append(
                train_seg_grid(data, inputs, np.arange(8), config, progress=False))))
            assert grid[0].steps == 4 * epochs and len(grid[0].losses) == grid[0].steps
            assert isinstance(grid[0].losses[0]["layer-1_patch"], np.ndarray)
        assert counts[0] == counts[1], (bn, counts)  # 4x the steps, the same number of syncs


def test_statistics_on_the_device_equal_float64_statistics_on_the_host():
    store = make_store(num_images=6)
    mean, std = patch_statistics(seg_data(store), ["layer-2_patch"], np.arange(6))["layer-2_patch"]
    flat = np.concatenate([m.reshape(-1, m.shape[-1]).astype(np.float64) for m in store.features["layer-2_patch"]])
    np.testing.assert_allclose(mean, flat.mean(0).astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(std, flat.std(0).astype(np.float32), rtol=1e-5)
