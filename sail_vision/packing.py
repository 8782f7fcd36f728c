"""Packing images of different sizes into one token sequence (the NaViT idea), without padding.

Each image keeps its own ``<vision> ... </vision> [cls]`` tokens and 3-D positions; images are laid
end to end in one sequence and attention is block-diagonal, so no image sees another and every
image's hidden states equal its one-at-a-time encoding. This module owns the two decisions that
packing takes: which images go together (:func:`plan_packs`, a deterministic token-budget bin
packing) and which attention kernel runs the block-diagonal attention
(:func:`resolve_packed_attention`). :class:`PackedLayout` describes one packed sequence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch

from .errors import InputError

#: Kernels for block-diagonal attention. ``split``: sdpa once per image (exact, no wasted work, any
#: device); ``mask``: one sdpa call with a boolean block mask (computes the cross-image scores, then
#: masks them); ``flex``: FlexAttention with a block mask; ``varlen``: flash attention's variable-length
#: kernel (CUDA, float16/bfloat16). ``auto`` takes ``varlen`` where it runs, else ``split``.
PACKED_ATTENTION = ("auto", "split", "mask", "flex", "varlen")
#: How images of different grids are batched: ``packed`` (one sequence up to a token budget) or
#: ``grouped`` (one batch per grid, the result padded).
BATCHING = ("packed", "grouped")
#: Default token budget of one packed sequence for ``SailEncoder.encode``: four SAIL-7B images of
#: 4096 patches.
DEFAULT_MAX_BATCH_TOKENS = 4 * 4098


@dataclass
class PackedLayout:
    """Where each image's tokens lie in one packed sequence, plus the masks the kernels need."""

    lengths: list[int]
    kernel: str = "split"
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def starts(self) -> list[int]:
        return [int(s) for s in np.concatenate([[0], np.cumsum(self.lengths)[:-1]])]

    @property
    def total(self) -> int:
        return int(sum(self.lengths))

    def segment_ids(self, device) -> torch.Tensor:
        """(T,) int32: which image each token belongs to."""
        key = ("ids", str(device))
        if key not in self._cache:
            lengths = torch.tensor(self.lengths, device=device)
            self._cache[key] = torch.repeat_interleave(torch.arange(len(self.lengths), device=device,
                                                                    dtype=torch.int32), lengths)
        return self._cache[key]

    def bool_mask(self, device) -> torch.Tensor:
        """(1, 1, T, T) bool, True where a query may attend a key (same image)."""
        key = ("bool", str(device))
        if key not in self._cache:
            ids = self.segment_ids(device)
            self._cache[key] = (ids[:, None] == ids[None, :])[None, None]
        return self._cache[key]

    def additive_mask(self, device, dtype) -> torch.Tensor:
        """(1, 1, T, T) float mask for eager attention: 0 inside an image, the dtype's minimum across."""
        key = ("additive", str(device), dtype)
        if key not in self._cache:
            allowed = self.bool_mask(device)
            mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
            self._cache[key] = mask.masked_fill_(~allowed, torch.finfo(dtype).min)
        return self._cache[key]

    def cu_seqlens(self, device) -> torch.Tensor:
        """(N + 1,) int32 cumulative lengths, as variable-length kernels take them."""
        key = ("cu", str(device))
        if key not in self._cache:
            cu = np.concatenate([[0], np.cumsum(self.lengths)]).astype(np.int32)
            self._cache[key] = torch.from_numpy(cu).to(device)
        return self._cache[key]

    def flex_block_mask(self, device):
        key = ("flex", str(device))
        if key not in self._cache:
            from torch.nn.attention.flex_attention import create_block_mask

            ids = self.segment_ids(device)

            def same_image(b, h, q, kv):
                return ids[q] == ids[kv]

            self._cache[key] = create_block_mask(same_image, None, None, self.total, self.total,
                                                 device=str(device))
        return self._cache[key]


def plan_packs(token_counts: Sequence[int], max_batch_tokens: int) -> list[list[int]]:
    """Group item indices into packs of at most ``max_batch_tokens`` tokens (first fit, largest first).

    Items are taken from the largest to the smallest (ties by index) and each goes into the first
    pack it fits in, so packs stay full; an item larger than the budget gets a pack of its own. The
    plan depends only on the counts and the budget; indices within a pack are in increasing order.
    Items of one size are placed together (vectorised), so a million images plan in about a second.
    """
    if max_batch_tokens <= 0:
        raise InputError(f"max_batch_tokens must be positive, got {max_batch_tokens}")
    counts = np.asarray(token_counts, dtype=np.int64)
    if counts.size == 0:
        return []
    if (counts <= 0).any():
        raise InputError("every item to pack needs at least one token")
    order = np.argsort(-counts, kind="stable")
    ordered = counts[order]
    pack_of = np.empty(counts.size, dtype=np.int64)  # by position in ``order``
    rooms = np.empty(0, dtype=np.int64)
    run_starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    for start, stop in zip(run_starts, np.r_[run_starts[1:], ordered.size]):
        size, left = int(ordered[start]), int(stop - start)
        assigned = []
        # First fit for equal items: the earliest pack with room takes as many as fit, then the next.
        open_packs = np.flatnonzero(rooms >= size)
        if open_packs.size:
            capacity = rooms[open_packs] // size
            used = np.minimum(capacity, np.maximum(0, left - (np.cumsum(capacity) - capacity)))
            chosen = used > 0
            assigned.append(np.repeat(open_packs[chosen], used[chosen]))
            rooms[open_packs[chosen]] -= used[chosen] * size
            left -= int(used.sum())
        if left:
            per_pack = max(1, max_batch_tokens // size)
            new_count = -(-left // per_pack)
            fill = np.full(new_count, per_pack, dtype=np.int64)
            fill[-1] = left - per_pack * (new_count - 1)
            assigned.append(rooms.size + np.repeat(np.arange(new_count), fill))
            rooms = np.concatenate([rooms, max_batch_tokens - fill * size])
        pack_of[start:stop] = np.concatenate(assigned)
    item_pack = np.empty(counts.size, dtype=np.int64)
    item_pack[order] = pack_of
    by_pack = np.lexsort((np.arange(counts.size), item_pack))
    bounds = np.flatnonzero(np.diff(item_pack[by_pack])) + 1
    return [part.tolist() for part in np.split(by_pack, bounds)]


def varlen_kernel():
    """The variable-length flash attention function available here, or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        varlen_attn = None
    if varlen_attn is not None:
        return varlen_attn
    try:  # the flash-attn package, when installed
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None

    def run(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, enable_gqa=False):
        return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale)

    return run


def resolve_packed_attention(name: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """The kernel ``name`` means on this device and dtype (``auto`` resolved); impossible choices fail."""
    if name not in PACKED_ATTENTION:
        raise InputError(f"packed attention {name!r}: choose from {', '.join(PACKED_ATTENTION)}")
    device = torch.device(device)
    half = dtype in (torch.float16, torch.bfloat16)
    varlen_ok = device.type == "cuda" and half and varlen_kernel() is not None
    if name == "auto":
        return "varlen" if varlen_ok else "split"
    if name == "varlen" and not varlen_ok:
        raise InputError("packed attention 'varlen' needs a CUDA device, float16 or bfloat16, and a "
                         "variable-length flash kernel (torch.nn.attention.varlen or flash-attn); "
                         "use 'split' or 'auto'")
    return name
