"""The result of encoding a batch: hidden states of chosen layers plus token-layout helpers."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import InputError, LayerIndexError
from .layer_indices import resolve_layer_indices

#: Pooled views of an image's tokens that the extractor and probes know by name.
POOLS = ("patch", "mean", "cls", "end")


@dataclass
class SailEncoding:
    """Hidden states of a batch in upstream token order.

    ``hidden_states[k]`` is (B, seq, D) for each requested layer k (normalised to 0..L), in the
    order ``<vision>``, the nh*nw patches row-major, ``</vision>``, then ``<|vis_cls|>`` if
    ``add_cls``. When the images' grids differ, shorter sequences are zero-padded at the end
    (``padding_mask`` marks real tokens).

    A *packed* encoding (``offsets`` set) instead holds ``hidden_states[k]`` of shape (1, T, D): the
    images' sequences end to end, image b's starting at ``offsets[b]``. The pooled views and
    :meth:`per_image` read both layouts; :meth:`padded` turns a packed encoding into the padded one.
    """

    hidden_states: dict[int, torch.Tensor]
    grids: list[tuple[int, int]]
    add_cls: bool
    num_layers: int
    norm: bool = False
    offsets: list[int] | None = None

    @property
    def packed(self) -> bool:
        return self.offsets is not None

    @property
    def layers(self) -> list[int]:
        return list(self.hidden_states)

    @property
    def batch_size(self) -> int:
        return len(self.grids)

    @property
    def uniform(self) -> bool:
        return len(set(self.grids)) == 1

    @property
    def grid(self) -> tuple[int, int]:
        """The common (nh, nw) grid; an error when the batch mixes grids (use ``per_image``)."""
        if not self.uniform:
            raise InputError(f"this batch mixes grids {sorted(set(self.grids))}; use .per_image() "
                             f"or pooled outputs")
        return self.grids[0]

    @property
    def seq_lens(self) -> list[int]:
        return [nh * nw + 2 + int(self.add_cls) for nh, nw in self.grids]

    @property
    def padding_mask(self) -> torch.Tensor:
        """(B, seq) bool, True at real tokens (of the padded layout)."""
        seq = max(self.seq_lens) if self.packed else next(iter(self.hidden_states.values())).shape[1]
        lens = torch.tensor(self.seq_lens)
        return torch.arange(seq)[None, :] < lens[:, None]

    def layer(self, index: int) -> torch.Tensor:
        """(B, seq, D) states of one layer; negative indices count from the end (-1 = L)."""
        k = resolve_layer_indices([index], self.num_layers)[0]
        if k not in self.hidden_states:
            raise LayerIndexError(f"layer {index} (= {k}) was not requested; encoded layers are "
                                  f"{self.layers}")
        return self.hidden_states[k]

    def image_states(self, index: int, b: int) -> torch.Tensor:
        """(seq_b, D) states of image b, without padding."""
        states = self.layer(index)
        if self.packed:
            return states[0, self.offsets[b]:self.offsets[b] + self.seq_lens[b]]
        return states[b, :self.seq_lens[b]]

    def patch_tokens(self, index: int = -1) -> torch.Tensor:
        """(B, nh*nw, D) patch states, row-major over the grid."""
        nh, nw = self.grid
        if self.packed:
            return torch.stack([self.image_states(index, b)[1:1 + nh * nw] for b in range(self.batch_size)])
        return self.layer(index)[:, 1:1 + nh * nw]

    def patch_rows(self, index: int = -1) -> torch.Tensor:
        """(sum of nh*nw, D): every image's patch states, row-major, images one after another
        (any mix of grids)."""
        if self.uniform and not self.packed:
            return self.patch_tokens(index).reshape(-1, self.layer(index).shape[-1])
        return torch.cat([self.image_states(index, b)[1:1 + nh * nw] for b, (nh, nw) in enumerate(self.grids)])

    def patch_maps(self, index: int = -1) -> torch.Tensor:
        """(B, D, nh, nw) patch states as 2-D feature maps."""
        nh, nw = self.grid
        tokens = self.patch_tokens(index)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], nh, nw)

    def mean_patch(self, index: int = -1) -> torch.Tensor:
        """(B, D) float32 mean of each image's patch states, accumulated and kept in float32 whatever the
        activation dtype (a caller casts once, e.g. to the save dtype: no intermediate rounding)."""
        return torch.stack([self.image_states(index, b)[1:1 + nh * nw].float().mean(0)
                            for b, (nh, nw) in enumerate(self.grids)])

    def end_token(self, index: int = -1) -> torch.Tensor:
        """(B, D) state of the ``</vision>`` token."""
        return torch.stack([self.image_states(index, b)[1 + nh * nw] for b, (nh, nw) in enumerate(self.grids)])

    def cls_token(self, index: int = -1) -> torch.Tensor:
        """(B, D) state of ``<|vis_cls|>``; needs ``add_cls=True`` at encoding."""
        if not self.add_cls:
            raise InputError("no <|vis_cls|> token: encode with add_cls=True")
        return torch.stack([self.image_states(index, b)[2 + nh * nw] for b, (nh, nw) in enumerate(self.grids)])

    def pooled(self, index: int, pool: str) -> torch.Tensor:
        """One of POOLS by name: 'patch' (B, nh*nw, D), 'mean', 'cls' or 'end' (B, D). Token states keep
        the activation dtype; the reduction 'mean' is float32."""
        getters = {"patch": self.patch_tokens, "mean": self.mean_patch, "cls": self.cls_token,
                   "end": self.end_token}
        if pool not in getters:
            raise InputError(f"pool {pool!r}: choose from {', '.join(POOLS)}")
        return getters[pool](index)

    def per_image(self) -> list["SailEncoding"]:
        """Split into single-image encodings without padding."""
        return [SailEncoding({k: self.image_states(k, b)[None] for k in self.hidden_states}, [grid], self.add_cls,
                             self.num_layers, self.norm)
                for b, grid in enumerate(self.grids)]

    def padded(self) -> "SailEncoding":
        """The same states in the padded (B, seq, D) layout (itself when not packed)."""
        if not self.packed:
            return self
        seq = max(self.seq_lens)
        states = {}
        for k, packed in self.hidden_states.items():
            out = packed.new_zeros(self.batch_size, seq, packed.shape[-1])
            for b, (start, length) in enumerate(zip(self.offsets, self.seq_lens)):
                out[b, :length] = packed[0, start:start + length]
            states[k] = out
        return SailEncoding(states, list(self.grids), self.add_cls, self.num_layers, self.norm)
