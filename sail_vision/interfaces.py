"""timm's and DINOv2's feature interfaces on :class:`~.encoder.SailEncoder` (a mixin it inherits).

Code written for timm ViTs (``forward_intermediates``, ``prune_intermediate_layers``,
``feature_info``) or for DINOv2 (``get_intermediate_layers``) runs on SAIL unchanged. Block indices
follow those libraries (block b, 0-based, negative from the end, an int n = the last n blocks) and
mean the full model's blocks, as everywhere in sail-vision: block b's output is hidden state b + 1 of
:meth:`~.encoder.SailEncoder.encode`, so the last block's output carries the final RMSNorm (as
transformers' ``hidden_states[-1]`` does) and ``norm=True`` applies it to every block. Input: a
normalised (B, 3, H, W) batch (ImageNet mean / std) with H and W multiples of the patch size.
"""

from __future__ import annotations

from typing import Iterable

import torch

from .errors import InputError
from .layer_indices import block_output_layers

OUTPUT_FORMATS = ("NCHW", "NLC")


class FeatureInterfacesMixin:
    """``forward_intermediates`` / ``prune_intermediate_layers`` / ``feature_info`` (timm) and
    ``get_intermediate_layers`` (DINOv2), built on ``encode_pixels``."""

    @property
    def feature_info(self) -> list[dict]:
        """timm's per-block feature description: channels, stride in pixels and module name."""
        return [{"num_chs": self.hidden_size, "reduction": self.patch_size, "module": f"layers.{i}"}
                for i in range(self.num_blocks)]

    def forward_intermediates(self, x: torch.Tensor, indices: int | Iterable[int] | None = None, norm: bool = False,
                              stop_early: bool = False, output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's ``forward_intermediates``: the outputs of the blocks ``indices`` (None = every loaded
        block; an int n = the last n; negatives from the end), in block order, as (B, D, h, w) maps
        (``NCHW``) or (B, h*w, D) patch tokens (``NLC``). ``norm`` applies the final RMSNorm to each.
        Blocks past the deepest requested one are not run when ``stop_early`` (they are otherwise,
        as in timm, to compute the final output). Unless ``intermediates_only``, returns (final,
        intermediates), final being the normed (B, seq, D) output of the last block run, all tokens."""
        if output_fmt not in OUTPUT_FORMATS:
            raise InputError(f"output_fmt {output_fmt!r}: choose from {', '.join(OUTPUT_FORMATS)}")
        wanted = self._block_layers(indices)
        last = wanted[-1] if stop_early else self.num_blocks
        run = wanted if intermediates_only else sorted({*wanted, last})
        states = self._block_states(x, run)
        maps = [self._normed(states[k], k, norm) for k in wanted]
        nh, nw = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        out = [self._patch_layout(s, nh, nw, output_fmt == "NCHW") for s in maps]
        if intermediates_only:
            return out
        return self._normed(states[last], last, True), out

    def prune_intermediate_layers(self, indices: int | Iterable[int] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> list[int]:
        """timm's ``prune_intermediate_layers``: drop the blocks after the deepest of ``indices``;
        returns the block indices kept for output (0-based). SAIL has no head; its final norm is one
        vector that the last hidden state and ``norm=True`` need, so it is kept whatever ``prune_norm``."""
        wanted = self._block_layers(indices)
        self.layers = self.layers[:wanted[-1]]
        self.num_blocks = wanted[-1]
        return [k - 1 for k in wanted]

    def get_intermediate_layers(self, x: torch.Tensor, n: int | Iterable[int] = 1, reshape: bool = False,
                                return_class_token: bool = False, norm: bool = True):
        """DINOv2's ``get_intermediate_layers``: the outputs of the last ``n`` blocks (or of the blocks
        listed), in block order, as (B, h*w, D) patch tokens or with ``reshape`` (B, D, h, w) maps;
        ``norm`` (default True, as DINOv2) applies the final RMSNorm. ``return_class_token`` appends
        ``<|vis_cls|>`` to the sequence (as ``encode(add_cls=True)`` does, which changes every token
        since attention over the image is bidirectional) and pairs each output with its (B, D) state."""
        wanted = self._block_layers(n)
        states = self._block_states(x, wanted, add_cls=return_class_token)
        nh, nw = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        normed = [self._normed(states[k], k, norm) for k in wanted]
        outputs = tuple(self._patch_layout(s, nh, nw, reshape) for s in normed)
        if return_class_token:
            return tuple(zip(outputs, [s[:, -1] for s in normed]))
        return outputs

    # ------------------------------------------------------------------ helpers
    def _block_layers(self, indices) -> list[int]:
        """Block indices -> hidden-state indices, checked against the loaded blocks."""
        return self.resolve_layers(block_output_layers(indices, self.num_layers, self.num_blocks))

    def _block_states(self, x: torch.Tensor, layers: list[int], add_cls: bool = False) -> dict[int, torch.Tensor]:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise InputError(f"expected a normalised (B, 3, H, W) image tensor, got {shape}")
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            raise InputError(f"image size {x.shape[-2]}x{x.shape[-1]} is not a multiple of the patch size {p}: "
                             f"resize or pad to multiples of {p}")
        encoding = self.encode_pixels(x, layers, add_cls=add_cls, enable_grad=torch.is_grad_enabled())
        return encoding.hidden_states

    def _normed(self, state: torch.Tensor, layer: int, norm: bool) -> torch.Tensor:
        """Hidden state ``layer`` with the final norm applied if asked (hidden state L already has it)."""
        if not norm or layer == self.num_layers:
            return state
        with torch.autocast(state.device.type, enabled=False):
            return self.norm(state)

    @staticmethod
    def _patch_layout(state: torch.Tensor, nh: int, nw: int, as_map: bool) -> torch.Tensor:
        """(B, seq, D) in SAIL's token order -> the patch tokens (B, nh*nw, D) or maps (B, D, nh, nw)."""
        tokens = state[:, 1:1 + nh * nw]
        if not as_map:
            return tokens
        return tokens.reshape(tokens.shape[0], nh, nw, -1).permute(0, 3, 1, 2).contiguous()
