"""extract() at native resolution packs images of different sizes: same features as grouped and as
one at a time, token budgets respected, the choice recorded and part of what --resume compares."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sail_vision.extraction import ExtractionError, extract
from sail_vision.extraction.loader import default_token_budget, plan_packed_batches
from sail_vision.extraction.encoding import batch_features
from sail_vision.extraction.writer import ArraySpec
from sail_vision.feature_store import open_feature_dir
from sail_vision.outputs import SailEncoding

from image_factory import save_rgb

FAST = dict(workers=0, progress=False, save_dtype="float32")
#: (width, height) in pixels; patch 8 -> grids 1x1, 1x12 (wide), 10x1 (tall), 3x5, 4x4, 6x2 ...
SIZES = [(8, 8), (96, 8), (8, 80), (40, 24), (32, 32), (16, 48), (8, 8), (40, 24), (24, 16), (56, 40)]
POOLS = ["patch", "mean", "cls", "end"]


@pytest.fixture
def sizes_folder(tmp_path):
    root = tmp_path / "sizes"
    for i, (w, h) in enumerate(SIZES):
        save_rgb(root / f"img{i:02d}.png", w, h, seed=i)
    return root


def _features(folder):
    features = open_feature_dir(folder)
    return features, {name: np.asarray(features.feature(name)) for name in features.names}


def test_packed_grouped_and_one_at_a_time_give_the_same_features(tiny_checkpoint, tiny_encoder, sizes_folder,
                                                                  tmp_path):
    runs = {"packed": dict(max_batch_tokens=40), "grouped": dict(batching="grouped", batch_size=4),
            "single": dict(batching="grouped", batch_size=1)}
    arrays = {}
    for name, options in runs.items():
        extract(tiny_checkpoint, sizes_folder, tmp_path / name, layers=[1, -1], pools=POOLS, **FAST, **options)
        features, arrays[name] = _features(tmp_path / name)
    for name in ("grouped", "single"):
        for feature, values in arrays["packed"].items():
            np.testing.assert_allclose(values, arrays[name][feature], rtol=1e-5, atol=1e-5, err_msg=feature)
    for i, path in enumerate(features.paths):  # and each equals the encoder on that one image
        alone = tiny_encoder.encode(path, [-1], add_cls=True)
        np.testing.assert_allclose(open_feature_dir(tmp_path / "packed").patch_maps("layer-4_patch", i).reshape(-1, 256),
                                   alone.patch_tokens(-1)[0].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(arrays["packed"]["layer-4_cls"][i], alone.cls_token(-1)[0].numpy(), rtol=1e-5,
                                   atol=1e-5)


def test_the_batching_is_recorded_and_resume_compares_it(tiny_checkpoint, sizes_folder, tmp_path):
    out = tmp_path / "out"
    extract(tiny_checkpoint, sizes_folder, out, pools=["mean"], **FAST)
    manifest = open_feature_dir(out).manifest
    assert manifest["settings"]["batching"] == "packed"
    assert manifest["settings"]["max_batch_tokens"] is None and manifest["settings"]["packed_attention"] == "split"
    assert "packed, block-diagonal attention: split" in manifest["attention"]
    with pytest.raises(ExtractionError, match="batching: was 'packed', now 'grouped'"):
        extract(tiny_checkpoint, sizes_folder, out, pools=["mean"], resume=True, batching="grouped", **FAST)
    with pytest.raises(ExtractionError, match="max_batch_tokens: was None, now 64"):
        extract(tiny_checkpoint, sizes_folder, out, pools=["mean"], resume=True, max_batch_tokens=64, **FAST)
    fixed = tmp_path / "fixed"  # one grid: nothing to pack
    extract(tiny_checkpoint, sizes_folder, fixed, pools=["mean"], resolution=16, **FAST)
    assert open_feature_dir(fixed).manifest["settings"]["batching"] == "grouped"


def test_packed_batches_respect_the_token_budget(tiny_checkpoint, sizes_folder, tmp_path, monkeypatch):
    from sail_vision.extraction import part_job as runner  # where extract_part plans its batches

    planned = []
    original = runner.plan_packed_batches

    def recording(grids, budget, extra):
        batches = original(grids, budget, extra)
        planned.append((budget, [int((grids[b, 0] * grids[b, 1] + extra).sum()) for b in batches], len(batches)))
        return batches

    monkeypatch.setattr(runner, "plan_packed_batches", recording)
    extract(tiny_checkpoint, sizes_folder, tmp_path / "small", pools=["mean"], max_batch_tokens=30, **FAST)
    extract(tiny_checkpoint, sizes_folder, tmp_path / "default", pools=["mean"], batch_size=2, **FAST)
    (budget, totals, count), (default_budget, _, default_count) = planned
    assert budget == 30 and count > 1
    longest = 7 * 5 + 2  # the 56x40 image: a 5x7 grid plus <vision> and </vision>
    assert all(t <= 30 for t in totals if t != longest)  # only an image over the budget runs alone
    assert default_budget == 2 * longest
    grids = np.load(tmp_path / "default" / "patch_grids.npy")
    assert default_token_budget(grids, 2, 2) == default_budget
    assert sorted(np.concatenate(plan_packed_batches(grids, default_budget, 2)).tolist()) == list(range(len(SIZES)))


def test_a_bad_value_in_a_packed_batch_names_its_image():
    grids = [(1, 2), (2, 2)]
    states = torch.zeros(1, 4 + 6, 8)
    states[0, 4 + 2] = float("nan")  # second image's second patch
    encoding = SailEncoding({4: states}, grids, add_cls=False, num_layers=4, offsets=[0, 4])
    specs = [ArraySpec("layer-4_patch", "layer-4_patch.npy", (6, 8), "float32", "rows", 4, "patch", "o.npy"),
             ArraySpec("layer-4_mean", "layer-4_mean.npy", (2, 8), "float32", "pooled", 4, "mean")]
    with pytest.raises(ExtractionError, match=r"/b.jpg \(rows \[7\]\)"):
        batch_features(encoding, specs, torch.float32, np.array([3, 7]), {3: "/a.jpg", 7: "/b.jpg"}, lambda: "hint")
    states[0, 4 + 2] = 1.0
    out = batch_features(encoding, specs, torch.float32, np.array([3, 7]), {3: "/a.jpg", 7: "/b.jpg"}, lambda: "")
    assert [v.shape for v in out["layer-4_patch"]] == [(2, 8), (4, 8)]
    assert out["layer-4_patch"][1][1, 0] == 1.0


def test_bad_batching_options_are_one_line_errors(tiny_checkpoint, sizes_folder, tmp_path):
    from sail_vision.errors import InputError

    for options, message in ((dict(batching="padded"), "--batching 'padded'"),
                             (dict(max_batch_tokens=0), "--max-batch-tokens must be positive"),
                             (dict(packed_attention="fast"), "--packed-attention 'fast'")):
        with pytest.raises(InputError, match=message):
            extract(tiny_checkpoint, sizes_folder, tmp_path / "out", **FAST, **options)
    assert not (tmp_path / "out").exists()
