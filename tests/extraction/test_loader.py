"""Same-grid batch planning, header scans and batch decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sail_vision.errors import InputError
from sail_vision.extraction.loader import NO_GRID, BatchDecoder, batch_loader, plan_batches, scan_grids
from sail_vision.preprocessing import Preprocess, image_to_patches

from image_factory import save_rgb, write_bad_inputs


def test_plan_batches_groups_same_grids_in_first_seen_order():
    grids = np.array([(4, 5), (3, 3), (4, 5), NO_GRID, (3, 3), (4, 5), (4, 5), (2, 2)])
    batches = [b.tolist() for b in plan_batches(grids, 2)]
    assert batches == [[0, 2], [5, 6], [1, 4], [7]]
    for batch in batches:
        assert len({tuple(grids[i]) for i in batch}) == 1
    assert [b.tolist() for b in plan_batches(grids, 3)] == [[0, 2, 5], [6], [1, 4], [7]]
    assert plan_batches(np.zeros((3, 2), int), 4) == []
    with pytest.raises(InputError):
        plan_batches(grids, 0)


def test_preprocess_grid_matches_the_patches(tmp_path):
    path = tmp_path / "a.png"
    save_rgb(path, 100, 75)
    for resolution in (None, 32, (16, 40)):
        pre = Preprocess.create(8, resolution, max_tokens=64)
        patches = pre.patches(str(path))
        assert tuple(patches.shape[:2]) == pre.grid_of_file(str(path))
        expected = image_to_patches(str(path), 8, 64, resolution)
        torch.testing.assert_close(patches, expected, rtol=0, atol=0)
    with pytest.raises(InputError, match="multiple of the patch size"):
        Preprocess.create(8, 30)


def test_batch_decoder_reports_failures_and_keeps_good_rows(tmp_path):
    good = [tmp_path / f"g{i}.png" for i in range(2)]
    for i, p in enumerate(good):
        save_rgb(p, 16, 16, seed=i)
    bad = write_bad_inputs(tmp_path / "bad")
    paths = [str(good[0]), str(bad["truncated"]), str(good[1]), str(bad["empty"])]
    pre = Preprocess.create(8, 16)
    grids = np.tile([2, 2], (4, 1))
    item = BatchDecoder(paths, pre, grids)[[0, 1, 2, 3]]
    assert item["rows"].tolist() == [0, 2]
    assert item["pixels"].shape == (2, 16, 16, 3) and item["pixels"].dtype == torch.uint8  # a quarter of float32
    assert torch.equal(pre.to_patches(item["pixels"]), torch.stack([pre.patches(str(p)) for p in good]))
    assert [(row, kind) for row, kind, _ in item["failures"]] == [(1, "truncated"), (3, "empty")]
    changed = BatchDecoder(paths, pre, np.tile([3, 3], (4, 1)))[[0]]
    assert changed["failures"][0][1] == "changed"


def test_loader_with_workers_yields_the_same_batches_in_order(tmp_path):
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"{i}.png"))
        save_rgb(tmp_path / f"{i}.png", 16 + 8 * (i % 2), 16, seed=i)
    pre = Preprocess.create(8)
    scanned = list(scan_grids(paths, pre, range(6), workers=2, chunk=2))
    grids = np.array([g for _, g, _ in scanned])
    batches = plan_batches(grids, 2)
    single = [b["rows"].tolist() for b in batch_loader(paths, pre, grids, batches, workers=0)]
    multi = list(batch_loader(paths, pre, grids, batches, workers=2))
    assert [b["rows"].tolist() for b in multi] == single == [b.tolist() for b in batches]
    assert all(b["pixels"].dtype == torch.uint8 for b in multi)
    assert all(tuple(s // 8 for s in b["pixels"].shape[1:3]) == tuple(grids[b["rows"][0]]) for b in multi)
