"""``SAILBackbone``: SAIL's patch states of chosen layers as mmseg feature maps."""

from __future__ import annotations

import copy
import inspect
import math
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..config import load_sail_config
from ..devices import cuda_index, resolve_compute_dtype, resolve_device, resolve_dtype
from ..encoder import SailEncoder
from ..errors import CheckpointError, InputError
from ..layer_indices import resolve_layer_indices
from ..packing import BATCHING, DEFAULT_MAX_BATCH_TOKENS
from ..preprocessing import pixels_to_patches
from .compat import ensure_mmseg

ensure_mmseg()
from mmengine.model import BaseModule  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402

#: How a list of images of different sizes runs: the encoder's ``packing.BATCHING`` (``packed``: one
#: sequence per token budget, block-diagonal attention; ``grouped``: one batch per patch grid) plus
#: ``single``: one forward per image.
BACKBONE_BATCHING = BATCHING + ("single",)


@MODELS.register_module()
class SAILBackbone(BaseModule):
    """SAIL as an mmseg backbone.

    Args:
        checkpoint: local SAIL checkpoint folder (Hugging Face layout; ``~`` expanded) or a Hugging Face
            hub id ``ORG/NAME[@REVISION]``, fetched with only the shards ``out_indices`` need. Required.
        out_indices: hidden-state indices to return (0 = embeddings, k = block k, -1 = last;
            negative count from the end; duplicates dropped). Default ``(-1,)``.
        norm: apply the final RMSNorm to intermediate layers too (the last layer always has it).
            Default ``False``.
        frozen: keep SAIL fixed (no gradients, always eval mode, not in the segmentor's
            parameters / state_dict / DDP). ``False`` fine-tunes it. Default ``True``.
        dtype: compute dtype of SAIL, a string as configs write it ('auto', 'float32', 'bfloat16',
            'float16'); 'auto' is bfloat16 on Ampere and later GPUs, float16 on older ones, float32
            on the CPU (``compute_dtype`` holds the resolved one). Outputs are always float32.
            Default ``'auto'``.
        attn_implementation: 'sdpa' or 'eager'. Default ``'sdpa'``.
        device: where SAIL's weights are read to: 'auto' (CUDA when available, else the CPU), 'cpu',
            'cuda' or 'cuda:N'. 'auto' and 'cuda' mean the rank's own GPU, resolved when the backbone is
            built (after the launcher's ``init_dist``): ``cuda:LOCAL_RANK`` under torchrun, else the
            current CUDA device. Checking a config touches no GPU. Default ``'auto'``.
        batching: how a *list* of images of different sizes runs (``BACKBONE_BATCHING``):
            ``'packed'`` lays them end to end in sequences of at most ``max_batch_tokens`` tokens
            with block-diagonal attention (``SailEncoder.encode_patches(batching='packed')``),
            ``'grouped'`` runs one batch per patch grid, ``'single'`` one forward per image. All
            three give every image the maps it gets alone. Default ``'packed'``.
        max_batch_tokens: token budget of one packed sequence (an image takes
            ``nh * nw + 2`` tokens; one longer than the budget runs alone). Default
            ``packing.DEFAULT_MAX_BATCH_TOKENS`` (16392, four SAIL-7B images of 4096 patches).
        init_cfg: must stay ``None``: weights come from ``checkpoint`` only.

    Input: normalised (B, 3, H, W), or a list of normalised (3, H_i, W_i) images of any sizes.
    H and W need not be multiples of the patch size p: each image is zero-padded at the
    bottom/right (zero = the mean colour after normalisation) and the maps keep every patch that
    touches the image, so each map is (B, D, ceil(H/p), ceil(W/p)) -- exactly (B, D, H/p, W/p)
    when p divides H and W.
    Output: for a tensor, a tuple of float32 maps in ``out_indices`` order; for a list, a list
    with one such tuple of (1, D, ceil(H_i/p), ceil(W_i/p)) maps per image, each equal to what
    the image alone gives.

    A (B, 3, H, W) tensor is one batch of one size: mmseg's ``SegDataPreProcessor`` has already
    stacked (and, where its ``test_cfg`` says so, padded) the images, and padding there is mmseg's
    contract, so the tensor runs as one forward and ``batching`` does not apply. Images of
    different sizes meet only in a list, as :func:`sail_vision.mmseg.inference.segment_images`
    (``sail-vision segment`` over several images) passes them in whole-image inference; there
    ``batching`` applies.

    When frozen, the encoder is held outside the module tree: ``parameters()``, ``state_dict()``
    (so mmengine checkpoints stay small), ``init_weights()`` and DDP never see it, and
    ``copy.deepcopy`` of the segmentor shares it instead of copying it. Module conversions keep
    its dtype: ``.half()``, ``.float()``, ``.to(dtype)`` and ``share_memory()`` leave it untouched,
    and ``.cuda()`` / ``.cpu()`` / ``.to(device)`` move it to that device only.
    """

    def __init__(self, checkpoint: str, out_indices: int | Sequence[int] = (-1,), norm: bool = False,
                 frozen: bool = True, dtype: str = "auto", attn_implementation: str = "sdpa",
                 device: str = "auto", batching: str = "packed",
                 max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, init_cfg=None):
        settings = self._resolve_arguments(checkpoint, out_indices, dtype, device, batching, max_batch_tokens,
                                           init_cfg)
        super().__init__(init_cfg=None)
        self.out_indices = settings["out_indices"]
        self.batching = settings["batching"]
        self.max_batch_tokens = settings["max_batch_tokens"]
        self.norm = bool(norm)
        self.frozen = bool(frozen)
        device = _rank_device(settings["device"])
        self.compute_dtype = resolve_compute_dtype(settings["dtype"], device)
        encoder = SailEncoder.from_pretrained(checkpoint, dtype=self.compute_dtype, device=device,
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

    @classmethod
    def check_config(cls, cfg: dict) -> dict:
        """Check a ``model.backbone`` config dict without reading any weight.

        Raises a one-line :class:`~sail_vision.errors.SailVisionError` for an unknown argument,
        a missing checkpoint folder, an out-of-range index, a bad dtype, device, batching or token
        budget; returns the resolved ``out_indices``, ``dtype`` (``'auto'`` stays ``'auto'``),
        ``device`` (``cuda`` without an index: which GPU is the rank's is known only after the launcher
        set it), ``batching`` and ``max_batch_tokens``. No CUDA context is created. The tools call it before mmengine's
        Runner starts, so a bad ``--cfg-options`` value is reported before anything is logged.
        """
        kwargs = {k: v for k, v in dict(cfg).items() if k != "type"}
        try:
            bound = inspect.signature(cls.__init__).bind(None, **kwargs)
        except TypeError as exc:
            raise InputError(f"model.backbone ({cls.__name__}): {exc}; its arguments are "
                             f"{', '.join(list(inspect.signature(cls.__init__).parameters)[1:])}") from None
        bound.apply_defaults()
        args = bound.arguments
        return cls._resolve_arguments(args["checkpoint"], args["out_indices"], args["dtype"], args["device"],
                                      args["batching"], args["max_batch_tokens"], args["init_cfg"])

    @staticmethod
    def _resolve_arguments(checkpoint, out_indices, dtype, device, batching, max_batch_tokens, init_cfg) -> dict:
        if init_cfg is not None:
            raise CheckpointError(f"SAILBackbone init_cfg={init_cfg!r}: SAIL weights come from "
                                  f"checkpoint={checkpoint!r} only; remove init_cfg")
        from .. import hub

        local = Path(str(checkpoint)).expanduser()
        is_hub = bool(checkpoint) and not local.exists() and hub.is_hub_id(str(checkpoint))
        if not is_hub and (not checkpoint or not local.is_dir()):
            raise CheckpointError(f"SAILBackbone checkpoint {checkpoint!r} is not a folder (relative paths start at "
                                  f"the current directory); point model.backbone.checkpoint to a local SAIL "
                                  f"checkpoint or a hub id ORG/NAME[@REVISION]. The tiny demo configs need "
                                  f"`python -m sail_vision.mmseg.synthetic` run first")
        if batching not in BACKBONE_BATCHING:
            raise InputError(f"SAILBackbone batching={batching!r}: choose from "
                             f"{', '.join(repr(b) for b in BACKBONE_BATCHING)}")
        if isinstance(max_batch_tokens, bool) or not isinstance(max_batch_tokens, int) or max_batch_tokens <= 0:
            raise InputError(f"SAILBackbone max_batch_tokens={max_batch_tokens!r}: use a positive whole number "
                             f"of tokens (default {DEFAULT_MAX_BATCH_TOKENS})")
        if is_hub:
            from ..checkpoint import open_checkpoint

            config = open_checkpoint(checkpoint, weights=False).config  # config, tokenizer and index only
        else:
            config = load_sail_config(local)
        num_layers = config.num_hidden_layers
        return {"out_indices": tuple(resolve_layer_indices(out_indices, num_layers)),
                "dtype": "auto" if dtype in (None, "auto") else resolve_dtype(dtype),
                "device": _resolve_device(device), "batching": batching,
                "max_batch_tokens": max_batch_tokens}

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
        # Every module conversion (.to, .cuda, .half, .float, share_memory...) ends here. A frozen
        # encoder is outside the module tree, so it is untouched unless the conversion moves tensors
        # to another device: then it follows, keeping its dtype. The probe is an empty tensor on the
        # encoder's device, so only a real device change moves 7B weights.
        result = super()._apply(fn, *args, **kwargs)
        if self.frozen:
            encoder = self.encoder
            target = fn(torch.empty(0, device=encoder.device, dtype=encoder.dtype)).device
            if target != encoder.device:
                encoder.to(target)
        return result

    def __deepcopy__(self, memo):
        # EMA hooks and model copies must not duplicate a frozen 7B encoder: copies share it.
        if self.frozen:
            memo[id(self._frozen_encoder)] = self._frozen_encoder
        clone = self.__class__.__new__(self.__class__)
        memo[id(self)] = clone
        for key, value in self.__dict__.items():
            object.__setattr__(clone, key, copy.deepcopy(value, memo))
        return clone

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """Map size for an input of height x width pixels."""
        return math.ceil(height / self.patch_size), math.ceil(width / self.patch_size)

    def sequence_length(self, height: int, width: int) -> int:
        """Tokens an image of height x width pixels takes in a packed sequence (``max_batch_tokens``
        counts these): its patches plus ``<vision>`` and ``</vision>``."""
        nh, nw = self.output_size(height, width)
        return nh * nw + 2

    def forward(self, pixels: torch.Tensor | Sequence[torch.Tensor]):
        """Maps of a (B, 3, H, W) batch, or of each image in a list of (3, H, W) (see the class)."""
        if isinstance(pixels, torch.Tensor):
            encoder = self._encoder_on(pixels.device)
            encoding = encoder.encode_pixels(self._pad(pixels).to(encoder.dtype), self.out_indices, norm=self.norm,
                                             enable_grad=self._grad())
            return self._maps(encoding)
        images = [self._pad(image) for image in self._check_images(pixels)]
        if self.batching == "single":
            return [self._maps(self._encode_images([image], "grouped")) for image in images]
        return [self._maps(one) for one in self._encode_images(images, self.batching).per_image()]

    @staticmethod
    def _check_images(images) -> list[torch.Tensor]:
        images = list(images)
        if not images:
            raise InputError("SAILBackbone got an empty list of images")
        for image in images:
            if not isinstance(image, torch.Tensor) or image.dim() != 3 or image.shape[0] != 3:
                shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
                raise InputError(f"SAILBackbone takes a (B, 3, H, W) tensor or a list of (3, H, W) images; "
                                 f"the list holds {shape}")
        return images

    def _encoder_on(self, device: torch.device) -> SailEncoder:
        """The encoder, checked to live where the input does (a mismatch is an error, not a 7B copy)."""
        encoder = self.encoder
        if device != encoder.device:
            raise InputError(f"SAILBackbone got input on {device} but SAIL's weights are on {encoder.device}; "
                             f"move the model with .to('{device}') (or build it with device='{device}') "
                             f"rather than moving the weights on every call")
        return encoder

    def _grad(self) -> bool:
        return (not self.frozen) and torch.is_grad_enabled()

    def _pad(self, pixels: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) zero-padded at the bottom/right to multiples of the patch size."""
        p = self.patch_size
        pad_h, pad_w = -pixels.shape[-2] % p, -pixels.shape[-1] % p
        return F.pad(pixels, (0, pad_w, 0, pad_h)) if pad_h or pad_w else pixels

    def _encode_images(self, images: list[torch.Tensor], batching: str):
        """Padded (3, H, W) images of any sizes through one ``SailEncoder.encode_patches`` call."""
        encoder = self._encoder_on(images[0].device)
        patches = [pixels_to_patches(image.to(encoder.dtype), self.patch_size) for image in images]
        return encoder.encode_patches(patches, self.out_indices, norm=self.norm, enable_grad=self._grad(),
                                      batching=batching, max_batch_tokens=self.max_batch_tokens,
                                      packed_output=True)

    def _maps(self, encoding) -> tuple[torch.Tensor, ...]:
        return tuple(encoding.patch_maps(k).float().contiguous() for k in self.out_indices)


def _resolve_device(device) -> torch.device:
    """'auto' -> cuda if CUDA is available, else cpu; checked, but a 'cuda' without an index stays so
    (see :func:`_rank_device`): nothing here creates a CUDA context."""
    if device is None or device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return resolve_device(device)
    except InputError:
        raise InputError(f"SAILBackbone device={device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N' "
                         f"(CUDA available: {torch.cuda.is_available()})") from None


def _rank_device(device: torch.device) -> torch.device:
    """'cuda' -> this process's GPU: ``cuda:LOCAL_RANK`` under a launcher (``devices.cuda_index``), else the
    current CUDA device. Called when the backbone is built, i.e. after mmengine's ``init_dist``."""
    if device.type != "cuda" or device.index is not None:
        return device
    if "LOCAL_RANK" in os.environ:
        return torch.device("cuda", cuda_index(None, distributed=True, local_rank=int(os.environ["LOCAL_RANK"]),
                                               device_count=torch.cuda.device_count()))
    return torch.device("cuda", torch.cuda.current_device())
