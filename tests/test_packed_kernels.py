"""Packed-attention kernels chosen by what the installed torch and the GPU offer, proved on the CPU:
a stand-in older ``varlen_attn`` signature, compute-capability mocks, FlexAttention masks without T x T."""

from __future__ import annotations

import math
import sys
import types

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import sail_vision.packing as packing
from sail_vision import SailEncoder
from sail_vision.attention import _packed_attention
from sail_vision.errors import InputError
from sail_vision.packing import PackedLayout, flex_length, flex_tiles, resolve_packed_attention

GRIDS = [(1, 1), (2, 3), (3, 2), (1, 17), (4, 4), (2, 3), (6, 5)]


def _items(grids, seed=0, p=8):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(nh, nw, 3, p, p, generator=gen) for nh, nw in grids]


def _reference_varlen(q, k, v, cu, scale):
    """Per-segment sdpa on (T, heads, dim) with equal head counts."""
    assert q.shape[1] == k.shape[1], "this kernel has no grouped-query support"
    out = []
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        out.append(torch.nn.functional.scaled_dot_product_attention(
            q[s:e].transpose(0, 1), k[s:e].transpose(0, 1), v[s:e].transpose(0, 1), scale=scale).transpose(0, 1))
    return torch.cat(out)


def old_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    """torch's first varlen_attn signature: no scale= (1/sqrt(head_dim)), no enable_gqa=."""
    return _reference_varlen(query, key, value, cu_seq_q, None)


def new_varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                    enable_gqa=False):
    if enable_gqa:
        groups = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(groups, 1), value.repeat_interleave(groups, 1)
    return _reference_varlen(query, key, value, cu_seq_q, scale)


def install_varlen(monkeypatch, function):
    """Make ``torch.nn.attention.varlen.varlen_attn`` this function (whether or not torch has the module)."""
    fake = types.ModuleType("torch.nn.attention.varlen")
    fake.varlen_attn = function
    monkeypatch.setitem(sys.modules, "torch.nn.attention.varlen", fake)
    monkeypatch.setattr(torch.nn.attention, "varlen", fake, raising=False)


class _GroupedModule:
    num_key_value_groups = 4
    is_causal = False


@pytest.mark.parametrize("stand_in", [old_varlen_attn, new_varlen_attn])
@pytest.mark.parametrize("scaling", [None, 0.3])
def test_varlen_with_either_signature_equals_split(monkeypatch, stand_in, scaling):
    install_varlen(monkeypatch, stand_in)
    gen = torch.Generator().manual_seed(0)
    lengths = [5, 9, 3]
    q = torch.randn(1, 8, sum(lengths), 16, generator=gen)
    k, v = (torch.randn(1, 2, sum(lengths), 16, generator=gen) for _ in range(2))
    split, _ = _packed_attention(_GroupedModule(), q, k, v, PackedLayout(lengths, "split"), scaling=scaling)
    varlen, _ = _packed_attention(_GroupedModule(), q, k, v, PackedLayout(lengths, "varlen"), scaling=scaling)
    torch.testing.assert_close(varlen, split, rtol=1e-5, atol=1e-5)


def test_encoder_on_an_older_varlen_signature_equals_split(tiny_checkpoint, monkeypatch):
    install_varlen(monkeypatch, old_varlen_attn)
    split = SailEncoder.from_pretrained(tiny_checkpoint, packed_attention="split")
    varlen = SailEncoder.from_pretrained(tiny_checkpoint, packed_attention="split")
    assert varlen.layers[0].self_attn.num_key_value_groups > 1
    monkeypatch.setattr(varlen, "packed_kernel", lambda: "varlen")  # what a CUDA GPU would resolve
    items = _items(GRIDS)
    expected = split.encode_patches(items, [2, -1], packed_output=True, max_batch_tokens=48)
    got = varlen.encode_patches(items, [2, -1], packed_output=True, max_batch_tokens=48)
    for k in expected.hidden_states:
        torch.testing.assert_close(got.hidden_states[k], expected.hidden_states[k], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("capability, dtype, expected", [
    ((7, 5), torch.float16, "split"),   # Turing: no flash kernel runs
    ((7, 0), torch.float16, "split"),   # Volta
    ((8, 0), torch.bfloat16, "varlen"),  # Ampere
    ((9, 0), torch.float16, "varlen"),  # Hopper
    ((9, 0), torch.float32, "split"),   # float32: no flash kernel
])
def test_auto_takes_varlen_only_where_it_runs(monkeypatch, capability, dtype, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    install_varlen(monkeypatch, new_varlen_attn)
    assert resolve_packed_attention("auto", "cuda:0", dtype) == expected


def test_varlen_refused_on_pre_ampere_and_without_a_kernel(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(InputError, match=r"compute capability 8.0 or later \(this one is 7.5\)"):
        resolve_packed_attention("varlen", "cuda:0", torch.float16)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(packing, "varlen_kernel", lambda: None)
    assert resolve_packed_attention("auto", "cuda:0", torch.bfloat16) == "split"
    with pytest.raises(InputError, match="variable-length flash kernel"):
        resolve_packed_attention("varlen", "cuda:0", torch.bfloat16)


def test_flex_lengths_are_bucketed():
    assert flex_length(1) == 128 and flex_length(128) == 128 and flex_length(129) == 256
    assert flex_length(4098) == 5120 and flex_length(16392) == 20480
    for total in range(1, 40000, 37):
        padded = flex_length(total)
        assert padded % 128 == 0 and total <= padded <= max(128, math.ceil(total * 1.25 / 128) * 128)
    assert len({flex_length(t) for t in range(8193, 16385)}) == 4  # four compiled kernels per doubling
    assert len({flex_length(t) for t in range(16392 // 2, 16393)}) <= 5  # packs of the default budget


@pytest.mark.parametrize("lengths", [[5, 300, 1, 130], [128, 128], [1], [700, 900, 33, 4098]])
def test_flex_tiles_match_the_dense_mask(lengths):
    partial, full = flex_tiles(lengths)
    padded = flex_length(sum(lengths))
    ids = np.repeat(np.arange(len(lengths) + 1), lengths + [padded - sum(lengths)])
    dense = ids[:, None] == ids[None, :]
    tiles = dense.reshape(padded // 128, 128, padded // 128, 128)
    assert np.array_equal(full, tiles.all(axis=(1, 3)))
    assert np.array_equal(partial | full, tiles.any(axis=(1, 3)))


class _LargestTensor(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_flex_block_mask_never_builds_t_by_t():
    pytest.importorskip("torch.nn.attention.flex_attention")
    lengths = [4098] * 4
    total = sum(lengths)
    with _LargestTensor() as probe:
        mask = PackedLayout(lengths, "flex").flex_block_mask("cpu")
    assert probe.largest <= 4 * flex_length(total), probe.largest  # tiles^2 and per-token ids, not T x T
    assert mask.shape[-2:] == (flex_length(total), flex_length(total))
    again = PackedLayout([4098, 4098, 4098, 4097], "flex").flex_block_mask("cpu")
    assert again.mask_mod is mask.mask_mod  # one mask function per bucket: the compiled kernel is reused


def test_flex_with_padding_equals_split():
    pytest.importorskip("torch.nn.attention.flex_attention")
    gen = torch.Generator().manual_seed(1)
    lengths = [70, 200, 3]  # 273 tokens, padded to 384
    q = torch.randn(1, 8, sum(lengths), 16, generator=gen)
    k, v = (torch.randn(1, 2, sum(lengths), 16, generator=gen) for _ in range(2))
    split, _ = _packed_attention(_GroupedModule(), q, k, v, PackedLayout(lengths, "split"), scaling=0.2)
    flex, _ = _packed_attention(_GroupedModule(), q, k, v, PackedLayout(lengths, "flex"), scaling=0.2)
    torch.testing.assert_close(flex, split, rtol=1e-5, atol=1e-5)


def test_flex_masks_of_one_bucket_never_see_each_others_images():
    """Two layouts of one padded length share the mask function's id buffer: each mask, fetched right
    before use, must still mask its own images."""
    pytest.importorskip("torch.nn.attention.flex_attention")
    gen = torch.Generator().manual_seed(2)
    first, second = PackedLayout([100, 20, 60], "flex"), PackedLayout([30, 150], "flex")
    assert flex_length(first.total) == flex_length(second.total) == 256
    for layout in (first, second, first):
        total = layout.total
        q = torch.randn(1, 8, total, 16, generator=gen)
        k, v = (torch.randn(1, 2, total, 16, generator=gen) for _ in range(2))
        split, _ = _packed_attention(_GroupedModule(), q, k, v, PackedLayout(layout.lengths, "split"), scaling=0.3)
        flex, _ = _packed_attention(_GroupedModule(), q, k, v, layout, scaling=0.3)
        torch.testing.assert_close(flex, split, rtol=1e-5, atol=1e-5)
