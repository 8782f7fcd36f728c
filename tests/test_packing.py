"""Packing images of different grids into one sequence: the plan, the kernels, equality with one at a time."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sail_vision import SailEncoder
from sail_vision.errors import InputError
from sail_vision.packing import PackedLayout, plan_packs, resolve_packed_attention

#: Grids that stress the layout: 1x1, very wide and very tall, repeats, and one larger than a small budget.
GRIDS = [(1, 1), (2, 3), (3, 2), (1, 17), (17, 1), (4, 4), (2, 3), (1, 2), (6, 5)]


def _items(grids, seed=0, p=8):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(nh, nw, 3, p, p, generator=gen) for nh, nw in grids]


def _first_fit_reference(counts, budget):
    """First fit decreasing, written the obvious way (the plan must equal it)."""
    packs, rooms = [], []
    for i in np.argsort(-np.asarray(counts), kind="stable"):
        for p, room in enumerate(rooms):
            if counts[i] <= room:
                packs[p].append(int(i))
                rooms[p] -= counts[i]
                break
        else:
            packs.append([int(i)])
            rooms.append(budget - counts[i])
    return [sorted(pack) for pack in packs]


def test_plan_is_first_fit_decreasing_within_the_budget():
    rng = np.random.default_rng(0)
    for _ in range(200):
        counts = rng.integers(1, rng.integers(2, 60), size=rng.integers(1, 50))
        budget = int(rng.integers(1, 150))
        packs = plan_packs(counts, budget)
        assert packs == _first_fit_reference(list(counts), budget)
        assert sorted(i for pack in packs for i in pack) == list(range(len(counts)))
        for pack in packs:
            assert len(pack) == 1 or counts[pack].sum() <= budget
        assert plan_packs(counts, budget) == packs  # deterministic


def test_plan_keeps_packs_full_and_refuses_bad_budgets():
    counts = [51] * 40 + [3] * 40
    packs = plan_packs(counts, 200)
    # 14 packs of the 51s (3 per pack, 47 tokens left); the 3s fill those gaps (15 per gap), no new pack.
    assert len(packs) == 14
    assert [sum(counts[i] for i in pack) for pack in packs[:3]] == [198, 198, 183]
    with pytest.raises(InputError, match="max_batch_tokens"):
        plan_packs(counts, 0)
    with pytest.raises(InputError, match="at least one token"):
        plan_packs([3, 0], 10)
    assert plan_packs([], 10) == []


def test_layout_masks_are_block_diagonal():
    layout = PackedLayout([2, 3, 1])
    assert layout.starts == [0, 2, 5] and layout.total == 6
    mask = layout.bool_mask("cpu")[0, 0]
    expected = torch.block_diag(torch.ones(2, 2), torch.ones(3, 3), torch.ones(1, 1)).bool()
    assert torch.equal(mask, expected)
    assert layout.cu_seqlens("cpu").tolist() == [0, 2, 5, 6]
    additive = layout.additive_mask("cpu", torch.float32)[0, 0]
    assert torch.equal(additive == 0, expected)


def _assert_equal_to_one_at_a_time(encoder, items, packed, layers, add_cls, norm=False):
    for i, item in enumerate(items):
        alone = encoder.encode_patches(item, layers, add_cls=add_cls, norm=norm)
        for k in alone.hidden_states:
            torch.testing.assert_close(packed.image_states(k, i), alone.hidden_states[k][0], rtol=1e-5, atol=1e-5)
        for pool in ("mean", "end") + (("cls",) if add_cls else ()):
            torch.testing.assert_close(packed.pooled(-1, pool)[i], alone.pooled(-1, pool)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel", ["split", "mask", "flex"])
@pytest.mark.parametrize("add_cls", [False, True])
def test_packed_equals_one_at_a_time_for_every_kernel(tiny_checkpoint, kernel, add_cls):
    if kernel == "flex":
        pytest.importorskip("torch.nn.attention.flex_attention")
    encoder = SailEncoder.from_pretrained(tiny_checkpoint, packed_attention=kernel)
    items = _items(GRIDS)
    packed = encoder.encode_patches(items, [0, 2, -1], add_cls=add_cls, packed_output=True, max_batch_tokens=48)
    assert packed.packed and encoder.packed_kernel() == kernel
    _assert_equal_to_one_at_a_time(encoder, items, packed, [0, 2, -1], add_cls)


def test_eager_attention_packs_with_an_additive_mask(tiny_checkpoint):
    encoder = SailEncoder.from_pretrained(tiny_checkpoint, attn_implementation="eager")
    items = _items(GRIDS, seed=1)
    packed = encoder.encode_patches(items, [-1], norm=True, packed_output=True, max_batch_tokens=64)
    _assert_equal_to_one_at_a_time(encoder, items, packed, [-1], False, norm=True)


def test_packing_respects_the_token_budget(tiny_encoder, monkeypatch):
    seen = []
    original = SailEncoder._forward_packed

    def recording(self, items, *args, **kwargs):
        seen.append([tuple(item.shape[:2]) for item in items])
        return original(self, items, *args, **kwargs)

    monkeypatch.setattr(SailEncoder, "_forward_packed", recording)
    items = _items(GRIDS)
    tiny_encoder.encode_patches(items, [-1], max_batch_tokens=20)
    lengths = [[nh * nw + 2 for nh, nw in pack] for pack in seen]
    assert sorted(g for pack in seen for g in pack) == sorted(GRIDS)
    assert all(sum(pack) <= 20 or len(pack) == 1 for pack in lengths)
    assert any(len(pack) > 1 for pack in lengths)  # something was packed
    assert [32] in lengths  # the 6x5 image (32 tokens) is over the budget: it runs alone


def test_padded_result_equals_grouped_batching(tiny_encoder):
    items = _items(GRIDS, seed=2)
    packed = tiny_encoder.encode_patches(items, [1, -1], add_cls=True)
    grouped = tiny_encoder.encode_patches(items, [1, -1], add_cls=True, batching="grouped")
    assert not packed.packed and packed.grids == grouped.grids
    for k in (1, 4):
        assert packed.hidden_states[k].shape == grouped.hidden_states[k].shape
        torch.testing.assert_close(packed.hidden_states[k], grouped.hidden_states[k], rtol=1e-5, atol=1e-5)
        assert torch.equal(packed.hidden_states[k] == 0, grouped.hidden_states[k] == 0)  # same zero padding
    flat = tiny_encoder.encode_patches(items, [1], packed_output=True)
    rows = flat.patch_rows(1)
    assert rows.shape == (sum(nh * nw for nh, nw in GRIDS), 256)
    torch.testing.assert_close(rows[:1], flat.image_states(1, 0)[1:2])


def test_encode_packs_images_of_different_sizes(tiny_encoder):
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
              [(8, 8), (40, 8), (16, 24), (8, 8)]]
    together = tiny_encoder.encode(images, [-1])
    for i, image in enumerate(images):
        alone = tiny_encoder.encode(image, [-1])
        torch.testing.assert_close(together.mean_patch(-1)[i], alone.mean_patch(-1)[0], rtol=1e-5, atol=1e-5)


def test_bad_packing_choices_are_clear_errors(tiny_checkpoint, tiny_encoder):
    with pytest.raises(InputError, match="batching 'padded'"):
        tiny_encoder.encode_patches(_items(GRIDS[:2]), batching="padded")
    with pytest.raises(InputError, match="packed_attention 'fast'"):
        SailEncoder.from_pretrained(tiny_checkpoint, packed_attention="fast")
    with pytest.raises(InputError, match="needs a CUDA device"):
        resolve_packed_attention("varlen", "cpu", torch.bfloat16)
    assert resolve_packed_attention("auto", "cpu", torch.bfloat16) == "split"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kernel", ["auto", "split", "mask", "flex", "varlen"])
def test_cuda_kernels_equal_one_at_a_time(tiny_checkpoint, kernel):
    dtype = torch.bfloat16
    encoder = SailEncoder.from_pretrained(tiny_checkpoint, dtype=dtype, device="cuda", packed_attention=kernel)
    items = [item.cuda() for item in _items(GRIDS)]
    packed = encoder.encode_patches(items, [-1], packed_output=True, max_batch_tokens=64)
    for i, item in enumerate(items):
        alone = encoder.encode_patches(item, [-1])
        torch.testing.assert_close(packed.image_states(4, i).float(), alone.hidden_states[4][0].float(),
                                   rtol=0.05, atol=0.05)
