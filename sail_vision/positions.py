"""SAIL's image token sequence, 3-D position ids and rotary cos / sin tables."""

from __future__ import annotations

import torch

from .checkpoint import VisionTokenIds
from .config import ROPE_SECTIONS


def image_token_ids(token_ids: VisionTokenIds, nh: int, nw: int, add_cls: bool = False) -> torch.Tensor:
    """``<vision> <vpatch> x nh*nw </vision> [<|vis_cls|>]`` as a 1-D int64 tensor."""
    ids = [token_ids.begin] + [token_ids.patch] * (nh * nw) + [token_ids.end]
    if add_cls:
        ids.append(token_ids.cls)
    return torch.tensor(ids, dtype=torch.long)


def image_position_ids(nh: int, nw: int, add_cls: bool = False, prefix_len: int = 1,
                       trailing: int | None = None) -> torch.Tensor:
    """(3, seq) position ids (t, h, w) for ``prefix_len`` tokens, an nh x nw patch grid, then
    ``trailing`` tokens (default: ``</vision>`` and, with ``add_cls``, ``<|vis_cls|>``).

    Tokens before the grid sit at (i, i, i); patch (r, c) at (s, s + r, s + c) with s the first
    patch index; the j-th token after the grid at m + 1 + j on all rows, m = s + max(nh, nw) - 1.
    """
    s = prefix_len
    before = torch.arange(s).expand(3, s)
    rows = torch.arange(nh).repeat_interleave(nw)
    cols = torch.arange(nw).repeat(nh)
    grid = torch.stack([torch.zeros_like(rows), rows, cols]) + s
    n_after = 1 + int(add_cls) if trailing is None else trailing
    after = (s + max(nh, nw) + torch.arange(n_after)).expand(3, n_after)
    return torch.cat([before, grid, after], dim=1).long()


class SailRotaryEmbedding(torch.nn.Module):
    """Rotary tables for SAIL's sectioned 3-D positions.

    The head's frequency pairs are split into (t, h, w) sections (0, 32, 32): the high-frequency
    half rotates by the h row, the low-frequency half by w; t is unused. Frequencies and angles are
    computed in float32 and only the final cos / sin are cast to the activation dtype.
    """

    def __init__(self, head_dim: int, theta: float, sections=ROPE_SECTIONS):
        super().__init__()
        if 2 * sum(sections) != head_dim:
            raise ValueError(f"rotary sections {list(sections)} need head_dim {2 * sum(sections)}, got {head_dim}")
        self.sections = tuple(sections)
        self.head_dim = head_dim
        self.theta = theta

    def inv_freq(self, device=None) -> torch.Tensor:
        """Float32 inverse frequencies, made on demand so no module-wide ``.to(dtype)`` can
        lower their precision (upstream keeps them in float32 in every dtype)."""
        exponents = torch.arange(0, self.head_dim, 2, dtype=torch.int64, device=device).float() / self.head_dim
        return 1.0 / (self.theta ** exponents)

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids (3, seq) or (3, B, seq) -> cos, sin of shape (1 or B, seq, head_dim)."""
        if position_ids.dim() == 2:
            position_ids = position_ids[:, None, :]
        inv_freq = self.inv_freq(position_ids.device)
        chunks = []
        start = 0
        for axis, width in enumerate(self.sections):
            if width:
                pos = position_ids[axis].float()
                chunks.append(pos[..., None] * inv_freq[start:start + width])
            start += width
        freqs = torch.cat(chunks, dim=-1)
        emb = torch.cat([freqs, freqs], dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)
