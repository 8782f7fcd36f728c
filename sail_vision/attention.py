"""The attention back-end SAIL's blocks run: transformers' sdpa, with one fix for float32 on CUDA.

transformers hands grouped-query attention to ``scaled_dot_product_attention`` with ``enable_gqa=True``
when there is no mask. On CUDA no fused kernel takes float32 with grouped heads, so sdpa falls back to
its math kernel, which materialises the full score matrix (34 GB for 16 images of 4098 tokens at
SAIL-7B's 32 heads). For float32 on CUDA the key/value heads are therefore repeated first (8 -> 32 for
SAIL-7B), which the memory-efficient kernel accepts. Everything else goes to transformers' sdpa
unchanged, so CPU results are bit-identical to plain sdpa.
"""

from __future__ import annotations

import torch

#: The name SAIL's Mistral blocks are configured with when ``attn_implementation="sdpa"``.
SAIL_SDPA = "sail_sdpa"
_registered = False


def _repeats_kv_heads(query: torch.Tensor) -> bool:
    """Whether this call repeats key/value heads itself (float32 on CUDA)."""
    return query.is_cuda and query.dtype == torch.float32


class _RepeatedHeads:
    """How transformers' sdpa sees an attention module whose key/value heads were already repeated."""

    num_key_value_groups = 1

    def __init__(self, module: torch.nn.Module):
        self.is_causal = getattr(module, "is_causal", True)


def sail_sdpa_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention, with key/value heads repeated for float32 on CUDA.

    With ``sail_packing`` (a :class:`~sail_vision.packing.PackedLayout`) the sequence holds several
    images end to end and attention is block-diagonal, computed by the layout's kernel.
    """
    layout = kwargs.pop("sail_packing", None)
    if layout is not None:
        return _packed_attention(module, query, key, value, layout, **kwargs)
    return _sdpa(module, query, key, value, attention_mask, **kwargs)


def _sdpa(module, query, key, value, attention_mask, **kwargs):
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if groups > 1 and _repeats_kv_heads(query):
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
        module = _RepeatedHeads(module)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _packed_attention(module, query, key, value, layout, *, scaling=None, **kwargs):
    """Block-diagonal attention over a packed (1, heads, T, head_dim) sequence -> (1, T, heads, head_dim)."""
    kernel = layout.kernel
    if kernel == "split":  # sdpa once per image: exactly the one-at-a-time computation
        outputs = [_sdpa(module, query[:, :, s:s + n], key[:, :, s:s + n], value[:, :, s:s + n], None,
                         scaling=scaling, **kwargs)[0]
                   for s, n in zip(layout.starts, layout.lengths)]
        return torch.cat(outputs, dim=1), None
    if kernel == "mask":
        return _sdpa(module, query, key, value, layout.bool_mask(query.device), scaling=scaling, **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if kernel == "flex":
        from .packing import flex_length

        total = query.shape[2]
        pad = flex_length(total) - total  # bucketed lengths: the compiled kernel is reused across packs
        if pad:
            query, key, value = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (query, key, value))
        out = _flex_attention(query.is_cuda)(query, key, value, block_mask=layout.flex_block_mask(query.device),
                                             scale=scaling, enable_gqa=groups > 1)
        return out[:, :, :total].transpose(1, 2).contiguous(), None
    if kernel == "varlen":
        from .packing import varlen_kernel

        cu = layout.cu_seqlens(query.device)
        longest = max(layout.lengths)
        out = varlen_kernel()(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), cu, cu,
                              longest, longest, scale=scaling, enable_gqa=groups > 1)
        return out[None], None
    raise ValueError(f"unknown packed attention kernel {kernel!r}")


_compiled_flex = None


def _flex_attention(compiled: bool):
    """FlexAttention; compiled (a fused kernel per padded length bucket, static shapes) on CUDA, eager
    elsewhere."""
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if not compiled:
        return flex_attention
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=False)
    return _compiled_flex


def mistral_attention_name(attn_implementation: str) -> str:
    """The ``_attn_implementation`` for SAIL's blocks: 'sdpa' -> :data:`SAIL_SDPA` (registered here)."""
    global _registered
    if attn_implementation != "sdpa":
        return attn_implementation
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(SAIL_SDPA, sail_sdpa_attention)
        _registered = True
    return SAIL_SDPA


def describe_attention(attn_implementation: str, device_type: str, dtype: torch.dtype | str,
                       num_key_value_groups: int) -> str:
    """A line for manifests and logs: which attention path a run takes."""
    dtype = str(dtype).removeprefix("torch.")
    if attn_implementation != "sdpa":
        return attn_implementation
    if num_key_value_groups <= 1:
        return "sdpa"
    if device_type == "cuda" and dtype == "float32":
        return f"sdpa, key/value heads repeated x{num_key_value_groups} (float32 on CUDA: a fused kernel takes it)"
    return f"sdpa, grouped-query ({num_key_value_groups} query heads per key/value head)"
