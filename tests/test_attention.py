"""The attention back-end: plain sdpa on CPU, key/value heads repeated for float32 on CUDA."""

from __future__ import annotations

import torch

import sail_vision.attention as attention
from sail_vision.attention import describe_attention


def test_repeated_heads_path_equals_grouped_query_sdpa(tiny_encoder, monkeypatch):
    assert tiny_encoder.layers[0].self_attn.num_key_value_groups > 1  # the tiny preset has grouped heads
    torch.manual_seed(0)
    patches = torch.randn(2, 3, 2, 3, 8, 8)
    grouped = tiny_encoder.encode_patches(patches, [1, 4]).hidden_states
    calls = []

    def repeats(query):
        calls.append(query.shape)
        return True  # take the float32-on-CUDA path on this CPU

    monkeypatch.setattr(attention, "_repeats_kv_heads", repeats)
    repeated = tiny_encoder.encode_patches(patches, [1, 4]).hidden_states
    assert len(calls) == 4  # once per block
    for k in (1, 4):
        torch.testing.assert_close(repeated[k], grouped[k], rtol=0, atol=1e-5)


def test_only_float32_on_cuda_repeats_heads():
    assert not attention._repeats_kv_heads(torch.zeros(1, dtype=torch.float32))  # CPU
    assert "repeated x4" in describe_attention("sdpa", "cuda", "float32", 4)
    assert "grouped-query" in describe_attention("sdpa", "cuda", torch.bfloat16, 4)
    assert "grouped-query" in describe_attention("sdpa", "cpu", "float32", 4)
    assert describe_attention("eager", "cuda", "float32", 4) == "eager"
