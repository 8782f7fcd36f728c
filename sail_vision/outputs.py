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
    """

    hidden_states: dict[int, torch.Tensor]
    grids: list[tuple[int, int]]
    add_cls: bool
    num_layers: int
    norm: bool = False

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
        """(B, seq) bool, True at real tokens."""
        seq = next(iter(self.hidden_states.values())).shape[1]
        lens = torch.tensor(self.seq_lens)
        return torch.arange(seq)[None, :] < lens[:, None]

    def layer(self, index: int) -> torch.Tensor:
        """(B, seq, D) states of one layer; negative indices count from the end (-1 = L)."""
        k = resolve_layer_indices([index], self.num_layers)[0]
        if k not in self.hidden_states:
            raise LayerIndexError(f"layer {index} (= {k}) was not requested; encoded layers are "
                                  f"{self.layers}")
        return self.hidden_states[k]

    def patch_tokens(self, index: int = -1) -> torch.Tensor:
        """(B, nh*nw, D) patch states, row-major over the grid."""
        nh, nw = self.grid
        return self.layer(index)[:, 1:1 + nh * nw]

    def patch_maps(self, index: int = -1) -> torch.Tensor:
        """(B, D, nh, nw) patch states as 2-D feature maps."""
        nh, nw = self.grid
        tokens = self.patch_tokens(index)
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], nh, nw)

    def mean_patch(self, index: int = -1) -> torch.Tensor:
        """(B, D) mean of each image's patch states (float32 accumulation)."""
        states = self.layer(index)
        return torch.stack([states[b, 1:1 + nh * nw].float().mean(0).to(states.dtype)
                            for b, (nh, nw) in enumerate(self.grids)])

    def end_token(self, index: int = -1) -> torch.Tensor:
        """(B, D) state of the ``</vision>`` token."""
        states = self.layer(index)
        return torch.stack([states[b, 1 + nh * nw] for b, (nh, nw) in enumerate(self.grids)])

    def cls_token(self, index: int = -1) -> torch.Tensor:
        """(B, D) state of ``<|vis_cls|>``; needs ``add_cls=True`` at encoding."""
        if not self.add_cls:
            raise InputError("no <|vis_cls|> token: encode with add_cls=True")
        states = self.layer(index)
        return torch.stack([states[b, 2 + nh * nw] for b, (nh, nw) in enumerate(self.grids)])

    def pooled(self, index: int, pool: str) -> torch.Tensor:
        """One of POOLS by name: 'patch' (B, nh*nw, D), 'mean', 'cls' or 'end' (B, D)."""
        getters = {"patch": self.patch_tokens, "mean": self.mean_patch, "cls": self.cls_token,
                   "end": self.end_token}
        if pool not in getters:
            raise InputError(f"pool {pool!r}: choose from {', '.join(POOLS)}")
        return getters[pool](index)

    def per_image(self) -> list["SailEncoding"]:
        """Split into single-image encodings without padding."""
        out = []
        for b, (grid, length) in enumerate(zip(self.grids, self.seq_lens)):
            states = {k: v[b:b + 1, :length] for k, v in self.hidden_states.items()}
            out.append(SailEncoding(states, [grid], self.add_cls, self.num_layers, self.norm))
        return out
