"""Packing images of different sizes into one token sequence (the NaViT idea), without padding.

Each image keeps its own ``<vision> ... </vision> [cls]`` tokens and 3-D positions; images are laid
end to end in one sequence and attention is block-diagonal, so no image sees another and every
image's hidden states equal its one-at-a-time encoding. This module owns the two decisions that
packing takes: which images go together (:func:`plan_packs`, a deterministic token-budget bin
packing) and which attention kernel runs the block-diagonal attention
(:func:`resolve_packed_attention`). :class:`PackedLayout` describes one packed sequence.
"""

from __future__ import annotations

import inspect
import threading
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
        """FlexAttention's BlockMask for this layout padded to :func:`flex_length` (see :func:`flex_block_mask`).

        The tiles are built once per layout; the segment ids its mask function reads are loaded on every
        call, because that buffer is shared by all layouts of one padded length (in this thread): call
        this right before each attention call, as ``attention._packed_attention`` does.
        """
        key = ("flex", str(device))
        if key not in self._cache:
            self._cache[key] = flex_block_mask(self.lengths, device)
        else:
            _load_segment_ids(self.lengths, device)
        return self._cache[key]


#: FlexAttention's block size: masks are described per 128 x 128 tile, never per token pair.
FLEX_BLOCK = 128


def flex_length(total: int) -> int:
    """The padded length a packed sequence of ``total`` tokens runs FlexAttention at.

    Lengths are bucketed so that the compiled kernel (compiled for static shapes) is reused across packs:
    a multiple of :data:`FLEX_BLOCK`, rounded up to four steps per doubling. Packs of one token budget
    then meet about five buckets, within torch.compile's recompile limit (8), past which it would fall
    back to eager FlexAttention and its T x T scores. Padding is at most 25 % of the tokens; the padding
    tokens attend only each other, in tiles of their own, and no linear layer sees them.
    """
    step = max(FLEX_BLOCK, (1 << max(int(total).bit_length() - 1, 0)) // 4)
    return -(-int(total) // step) * step


#: Per thread, (device, padded length) -> (segment-id buffer, mask function): one function object per
#: bucket, so the compiled kernel sees the same mask_mod every pack (a new closure per pack would
#: recompile it); per thread, so two threads encoding at once never share a buffer.
_FLEX_MASK_MODS = threading.local()


def _flex_mask_mod(device, length: int):
    mods = _FLEX_MASK_MODS.__dict__.setdefault("by_bucket", {})
    key = (str(device), length)
    if key not in mods:
        ids = torch.zeros(length, dtype=torch.int32, device=device)

        def same_image(b, h, q, kv):
            return ids[q] == ids[kv]

        mods[key] = (ids, same_image)
    return mods[key]


def _load_segment_ids(lengths: Sequence[int], device):
    """Fill the bucket's shared segment-id buffer with these images' ids (padding: one more segment);
    returns the bucket's mask function."""
    padded = flex_length(sum(lengths))
    ids, mask_mod = _flex_mask_mod(device, padded)
    seg = np.repeat(np.arange(len(lengths) + 1, dtype=np.int32), list(lengths) + [padded - int(sum(lengths))])
    ids.copy_(torch.from_numpy(seg))
    return mask_mod


def flex_tiles(lengths: Sequence[int], block: int = FLEX_BLOCK):
    """The block-diagonal structure of a packed layout per ``block`` x ``block`` tile, from the sequence
    boundaries alone (never a T x T array): (partial, full) bool arrays of (q tiles, kv tiles).

    A tile is *full* when its queries and keys all lie in one image, *partial* when it crosses an
    image boundary but some query may attend some key there; other tiles are skipped. The sequence is
    padded to :func:`flex_length`; the padding is one more segment that attends only itself.
    """
    total = int(sum(lengths))
    padded = flex_length(total)
    bounds = np.concatenate([[0], np.cumsum(lengths), [padded] if padded > total else []]).astype(np.int64)
    seg_start, seg_end = bounds[:-1], bounds[1:]
    tiles = padded // block
    tile_first = np.arange(tiles) * block
    first_seg = np.searchsorted(bounds, tile_first, side="right") - 1  # the segment of each tile's first token
    last_seg = np.searchsorted(bounds, tile_first + block - 1, side="right") - 1
    lo = seg_start[first_seg] // block  # kv tiles a q tile may see: its segments' tiles
    hi = (seg_end[last_seg] - 1) // block
    cols = np.arange(tiles)
    touched = (cols[None, :] >= lo[:, None]) & (cols[None, :] <= hi[:, None])
    uniform = first_seg == last_seg
    full = touched & uniform[:, None] & uniform[None, :] & (first_seg[:, None] == first_seg[None, :])
    return touched & ~full, full


def flex_block_mask(lengths: Sequence[int], device):
    """A FlexAttention BlockMask for images of ``lengths`` laid end to end, built from their boundaries.

    The tile structure comes from :func:`flex_tiles` (O(tiles^2) small integers); only partial tiles
    evaluate the mask function, which compares per-token segment ids held in a buffer reused per
    padded length.
    """
    from torch.nn.attention.flex_attention import BlockMask

    partial, full = flex_tiles(lengths)
    padded = partial.shape[0] * FLEX_BLOCK
    mask_mod = _load_segment_ids(lengths, device)

    def as_kv_blocks(tiles):
        count = torch.from_numpy(tiles.sum(1).astype(np.int32))
        order = torch.from_numpy(np.argsort(~tiles, axis=1, kind="stable").astype(np.int32))
        return count[None, None].to(device), order[None, None].contiguous().to(device)

    kv_num, kv_idx = as_kv_blocks(partial)
    full_num, full_idx = as_kv_blocks(full)
    return BlockMask.from_kv_blocks(kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=FLEX_BLOCK, mask_mod=mask_mod,
                                    seq_lengths=(padded, padded))


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


def _has_parameter(function, name: str) -> bool:
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def varlen_kernel():
    """The variable-length flash attention available here, as ``run(q, k, v, cu_q, cu_k, max_q, max_k, *,
    scale=None, enable_gqa=False)`` on (T, heads, head_dim) tensors, or None.

    torch's ``varlen_attn`` is preferred; older torch releases have it without ``scale=`` and
    ``enable_gqa=`` (its signature is inspected): the scale is then folded into the queries and the
    key/value heads repeated. Else the flash-attn package's ``flash_attn_varlen_func`` (grouped heads
    natively).
    """
    try:
        from torch.nn.attention import varlen
        varlen_attn = varlen.varlen_attn
    except (ImportError, AttributeError):
        varlen_attn = None
    if varlen_attn is not None:
        takes_scale, takes_gqa = _has_parameter(varlen_attn, "scale"), _has_parameter(varlen_attn, "enable_gqa")
        if takes_scale and takes_gqa:
            return varlen_attn

        def adapted(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, enable_gqa=False):
            kwargs = {}
            if scale is not None:
                if takes_scale:
                    kwargs["scale"] = scale
                else:  # the kernel divides by sqrt(head_dim): fold the rest of the scale into q
                    q = q * (scale * q.shape[-1] ** 0.5)
            if enable_gqa and q.shape[1] != k.shape[1]:
                if takes_gqa:
                    kwargs["enable_gqa"] = True
                else:  # query head h reads key/value head h // groups
                    groups = q.shape[1] // k.shape[1]
                    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
            return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, **kwargs)

        return adapted
    try:  # the flash-attn package, when installed
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None

    def run(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, enable_gqa=False):
        return flash_attn_varlen_func(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale=scale)

    return run


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) compute capability of a CUDA device (8.0 = Ampere A100, 9.0 = Hopper)."""
    return tuple(torch.cuda.get_device_capability(device))


#: Flash kernels (torch's varlen, flash-attn 2) need Ampere (sm80) or later.
FLASH_MIN_CAPABILITY = (8, 0)


def resolve_packed_attention(name: str, device: torch.device | str, dtype: torch.dtype) -> str:
    """The kernel ``name`` means on this device and dtype (``auto`` resolved); impossible choices fail.

    ``varlen`` runs on CUDA GPUs of compute capability 8.0 or later in float16/bfloat16 with a
    variable-length kernel installed; ``auto`` takes it there and ``split`` (sdpa per image, which runs
    everywhere) elsewhere.
    """
    if name not in PACKED_ATTENTION:
        raise InputError(f"packed attention {name!r}: choose from {', '.join(PACKED_ATTENTION)}")
    device = torch.device(device)
    half = dtype in (torch.float16, torch.bfloat16)
    if name not in ("auto", "varlen"):
        return name
    problem = None
    if device.type != "cuda" or not half:
        problem = "needs a CUDA device and float16 or bfloat16"
    elif cuda_capability(device) < FLASH_MIN_CAPABILITY:
        major, minor = cuda_capability(device)
        problem = f"needs a GPU of compute capability 8.0 or later (this one is {major}.{minor})"
    elif varlen_kernel() is None:
        problem = "needs a variable-length flash kernel (torch.nn.attention.varlen or flash-attn)"
    if name == "auto":
        return "split" if problem else "varlen"
    if problem:
        raise InputError(f"packed attention 'varlen' {problem}; use 'split' or 'auto'")
    return name
