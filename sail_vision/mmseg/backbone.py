"""``SAILBackbone``: SAIL's patch states of chosen layers as mmseg feature maps."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from mmengine.model import BaseModule

from ..config import load_sail_config
from ..encoder import SailEncoder, resolve_dtype
from ..errors import CheckpointError
from ..layer_indices import resolve_layer_indices
from .compat import ensure_mmseg

ensure_mmseg()
from mmseg.registry import MODELS  # noqa: E402


@MODELS.register_module()
class SAILBackbone(BaseModule):
    """SAIL as an mmseg backbone.

    Args:
        checkpoint: local SAIL checkpoint folder (Hugging Face layout). Required.
        out_indices: hidden-state indices to return (0 = embeddings, k = block k, -1 = last;
            negative count from the end; duplicates dropped). Default ``(-1,)``.
        norm: apply the final RMSNorm to intermediate layers too (the last layer always has it).
            Default ``False``.
        frozen: keep SAIL fixed (no gradients, always eval mode, not in the segmentor's
            parameters / state_dict / DDP). ``False`` fine-tunes it. Default ``True``.
        dtype: compute dtype of SAIL, a string as configs write it ('float32', 'bfloat16',
            'float16'). Outputs are always float32. Default ``'float32'``.
        attn_implementation: 'sdpa' or 'eager'. Default ``'sdpa'``.
        init_cfg: must stay ``None``: weights come from ``checkpoint`` only.

    Input: normalised (B, 3, H, W). H and W need not be multiples of the patch size p: the
    batch is zero-padded at the bottom/right (zero = the mean colour after normalisation) and
    the maps keep every patch that touches the image, so each map is
    (B, D, ceil(H/p), ceil(W/p)) -- exactly (B, D, H/p, W/p) when p divides H and W.
    Output: a tuple of float32 maps in ``out_indices`` order.

    When frozen, the encoder is held outside the module tree: ``parameters()``, ``state_dict()``
    (so mmengine checkpoints stay small), ``init_weights()`` and DDP never see it. It is read from
    ``checkpoint`` when the segmentor is built and follows the input's device on first use.
    """

    def __init__(self, checkpoint: str, out_indices: int | Sequence[int] = (-1,), norm: bool = False,
                 frozen: bool = True, dtype: str = "float32", attn_implementation: str = "sdpa",
                 init_cfg=None):
        if init_cfg is not None:
            raise CheckpointError(f"SAILBackbone init_cfg={init_cfg!r}: SAIL weights come from "
                                  f"checkpoint={checkpoint!r} only; remove init_cfg")
        super().__init__(init_cfg=None)
        if not checkpoint or not Path(checkpoint).is_dir():
            raise CheckpointError(f"SAILBackbone checkpoint {checkpoint!r} is not a folder (relative paths start at "
                                  f"the current directory); point model.backbone.checkpoint to a local SAIL "
                                  f"checkpoint. The tiny demo configs need `python -m sail_vision.mmseg.synthetic` "
                                  f"run first")
        num_layers = load_sail_config(checkpoint).num_hidden_layers
        self.out_indices = tuple(resolve_layer_indices(out_indices, num_layers))
        self.norm = bool(norm)
        self.frozen = bool(frozen)
        self.compute_dtype = resolve_dtype(dtype)
        encoder = SailEncoder.from_pretrained(checkpoint, dtype=self.compute_dtype,
                                              max_layer=max(self.out_indices),
                                              attn_implementation=attn_implementation)
        if self.frozen:
            object.__setattr__(self, "_frozen_encoder", encoder)  # not a registered submodule
        else:
            encoder.requires_grad_(True)
            self._trainable_encoder = encoder
        self.embed_dim = encoder.hidden_size
        self.patch_size = encoder.patch_size
        self.is_init = True

    @property
    def encoder(self) -> SailEncoder:
        return self._frozen_encoder if self.frozen else self._trainable_encoder

    def init_weights(self) -> None:
        """Nothing to initialise: every weight was read from the SAIL checkpoint."""

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.train(mode and not self.frozen)
        return self

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda() on the segmentor: a frozen encoder moves to the same device but keeps its dtype.
        result = super()._apply(fn, *args, **kwargs)
        if self.frozen:
            probe = fn(torch.zeros(1))
            if probe.device != self.encoder.device:
                self.encoder.to(probe.device)
        return result

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Map size for an input of height x width pixels."""
        return math.ceil(height / self.patch_size), math.ceil(width / self.patch_size)

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoder = self.encoder
        if pixels.device != encoder.device:
            encoder.to(pixels.device)
        p = self.patch_size
        pad_h, pad_w = -pixels.shape[-2] % p, -pixels.shape[-1] % p
        if pad_h or pad_w:
            pixels = F.pad(pixels, (0, pad_w, 0, pad_h))
        grad = (not self.frozen) and torch.is_grad_enabled()
        encoding = encoder.encode_pixels(pixels.to(encoder.dtype), self.out_indices, norm=self.norm,
                                         enable_grad=grad)
        return tuple(encoding.patch_maps(k).float().contiguous() for k in self.out_indices)
