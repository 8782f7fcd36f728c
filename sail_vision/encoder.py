"""The SAIL vision encoder: SAIL's decoder run on image-only token sequences.

Reuses transformers' Mistral decoder blocks and RMSNorm; adds what SAIL has on top: the patch
embedding (added to the ``<vpatch>`` token embedding), 3-D rotary positions and bidirectional
attention over the image.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn

from .checkpoint import VISION_TOKENS, VisionTokenIds, expected_tensor_shapes, open_checkpoint
from .config import SailConfig
from .devices import resolve_compute_dtype, resolve_device
from .errors import InputError, LayerIndexError
from .interfaces import FeatureInterfacesMixin
from .layer_indices import resolve_layer_indices
from .outputs import SailEncoding
from .packing import (BATCHING, DEFAULT_MAX_BATCH_TOKENS, PACKED_ATTENTION, PackedLayout, plan_packs,
                      resolve_packed_attention)
from .positions import SailRotaryEmbedding, image_position_ids
from .preprocessing import DEFAULT_MAX_TOKENS, image_to_patches, pixels_to_patches

_TOKEN_ROLES = tuple(VISION_TOKENS)
#: Rotary tables kept per encoder: 32 grids of SAIL-7B's 4098 tokens take ~64 MB in bfloat16.
ROTARY_CACHE_GRIDS = 32


class SailEncoder(FeatureInterfacesMixin, nn.Module):
    """SAIL as a vision backbone: images in, per-token hidden states of chosen layers out.

    Build it with :meth:`from_pretrained`. Only blocks 1..``num_blocks`` exist; hidden-state
    indices keep the full model's meaning (0 = embeddings, L = final norm of block L).
    """

    def __init__(self, config: SailConfig, token_ids: VisionTokenIds, *, num_blocks: int | None = None,
                 attn_implementation: str = "sdpa", packed_attention: str = "auto"):
        super().__init__()
        from transformers.models.mistral.modeling_mistral import MistralDecoderLayer, MistralRMSNorm

        if attn_implementation not in ("sdpa", "eager"):
            raise InputError(f"attn_implementation {attn_implementation!r}: use 'sdpa' or 'eager'")
        self.config = config
        self.token_ids = token_ids
        self.attn_implementation = attn_implementation
        #: Kernel for images packed into one sequence (see ``packing.PACKED_ATTENTION``).
        self.packed_attention = packed_attention
        if packed_attention not in PACKED_ATTENTION:
            raise InputError(f"packed_attention {packed_attention!r}: choose from {', '.join(PACKED_ATTENTION)}")
        self.num_layers = config.num_hidden_layers
        self.num_blocks = self.num_layers if num_blocks is None else num_blocks
        mistral_cfg = config.to_mistral_config(attn_implementation)
        # Only the embedding rows of the six vision tokens are needed, not the 32k-row table.
        self.vision_token_embeds = nn.Parameter(torch.empty(len(_TOKEN_ROLES), config.hidden_size))
        self.vis_embed = nn.Linear(config.patch_dim, config.hidden_size, bias=False)
        self.layers = nn.ModuleList(MistralDecoderLayer(mistral_cfg, i) for i in range(self.num_blocks))
        for layer in self.layers:
            layer.self_attn.is_causal = False  # an image-only sequence attends bidirectionally
        self.norm = MistralRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary = SailRotaryEmbedding(config.head_dim, config.rope_theta)
        #: (nh, nw, add_cls, dtype, device) -> rotary (cos, sin): built once per grid on the device, so a
        #: batch needs no host-to-device copy of position ids (a few grids at fixed resolution, dozens native).
        self._rotary_tables: OrderedDict = OrderedDict()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(cls, path: str | Path, *, dtype: str | torch.dtype = "auto",
                        device: str | torch.device = "cpu", max_layer: int | None = None,
                        attn_implementation: str = "sdpa", packed_attention: str = "auto") -> "SailEncoder":
        """Load a SAIL checkpoint (Hugging Face format): a local folder or a hub id ``ORG/NAME[@REVISION]``
        (fetched with only the shards the loaded blocks need, see :func:`~.checkpoint.open_checkpoint`).

        ``max_layer=k`` builds and reads only blocks 1..k (hidden-state indices 0..k stay
        available; negative k counts from the end). ``lm_head`` and the token embedding table
        (except the six vision-token rows) are never read. Every tensor read is shape-checked
        and every module parameter must be filled: nothing loads leniently. ``packed_attention``
        picks the kernel for images of different sizes packed into one sequence
        (``packing.PACKED_ATTENTION``; ``auto`` suits the device). ``dtype="auto"`` (the default) is
        float32 on the CPU, bfloat16 on Ampere and later GPUs, float16 on older ones
        (``devices.auto_dtype``); the resolved dtype is ``encoder.dtype``.
        """
        ckpt = open_checkpoint(path, max_layer=max_layer)
        cfg = ckpt.config
        num_blocks = cfg.num_hidden_layers
        if max_layer is not None:
            num_blocks = resolve_layer_indices([max_layer], cfg.num_hidden_layers)[0]
        dtype = resolve_compute_dtype(dtype, device)
        shapes = expected_tensor_shapes(cfg, num_blocks)
        embed_name = "model.embed_tokens.weight"
        rows = [getattr(ckpt.token_ids, role) for role in _TOKEN_ROLES]
        tensors = ckpt.read_tensors(shapes, dtype=dtype, device=device, row_subsets={embed_name: rows})
        state = {}
        for name, tensor in tensors.items():
            key = "vision_token_embeds" if name == embed_name else name.removeprefix("model.")
            state[key] = tensor
        with torch.device("meta"):
            model = cls(cfg, ckpt.token_ids, num_blocks=num_blocks, attn_implementation=attn_implementation,
                        packed_attention=packed_attention)
        model.load_state_dict(state, strict=True, assign=True)
        model.checkpoint_path = str(ckpt.path.resolve())
        model.checkpoint_repo, model.checkpoint_revision = ckpt.repo_id, ckpt.revision
        model.requires_grad_(False)
        return model.eval()

    # ------------------------------------------------------------------ properties
    @property
    def patch_size(self) -> int:
        return self.config.vision_patch_size

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return self.vis_embed.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.vis_embed.weight.device

    def resolve_layers(self, layers: int | Iterable[int]) -> list[int]:
        """Normalise layer indices (negative from the end) and check the blocks are loaded."""
        indices = resolve_layer_indices(layers, self.num_layers)
        too_deep = [i for i in indices if i > self.num_blocks]
        if too_deep:
            raise LayerIndexError(
                f"layer(s) {too_deep} need blocks up to {max(too_deep)}, but this encoder was loaded "
                f"with max_layer={self.num_blocks}; load with a larger max_layer (or None)")
        return indices

    # ------------------------------------------------------------------ encoding
    def encode(self, images, layers: int | Iterable[int] = -1, *, norm: bool = False,
               add_cls: bool = False, max_tokens: int = DEFAULT_MAX_TOKENS, resolution=None,
               enable_grad: bool = False, batching: str = "packed",
               max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS) -> SailEncoding:
        """Encode images (paths, PIL images or uint8 arrays; one or a list).

        Preprocessing follows upstream (native resolution, capped at ``max_tokens`` patches)
        unless ``resolution`` asks for a fixed size (see ``preprocessing.resize_image``). Images of
        different sizes are packed (see :meth:`encode_patches`).
        """
        if not isinstance(images, (list, tuple)):
            images = [images]
        patches = [image_to_patches(img, self.patch_size, max_tokens, resolution) for img in images]
        return self.encode_patches(patches, layers, norm=norm, add_cls=add_cls, enable_grad=enable_grad,
                                   batching=batching, max_batch_tokens=max_batch_tokens)

    def encode_pixels(self, pixels: torch.Tensor, layers: int | Iterable[int] = -1, *, norm: bool = False,
                      add_cls: bool = False, enable_grad: bool = False) -> SailEncoding:
        """Encode a normalised batch (B, 3, H, W) whose H and W are multiples of the patch size."""
        if pixels.dim() != 4 or pixels.shape[1] != 3:
            raise InputError(f"pixels must have shape (B, 3, H, W), got {tuple(pixels.shape)}")
        return self.encode_patches(pixels_to_patches(pixels, self.patch_size), layers, norm=norm,
                                   add_cls=add_cls, enable_grad=enable_grad)

    def encode_patches(self, patches, layers: int | Iterable[int] = -1, *, norm: bool = False,
                       add_cls: bool = False, enable_grad: bool = False, batching: str = "packed",
                       max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS, packed_output: bool = False) -> SailEncoding:
        """Encode preprocessed patches: a (B, nh, nw, 3, p, p) tensor, one (nh, nw, 3, p, p)
        tensor, or a list of those with possibly different grids.

        Images sharing one grid run as one batch. Images of different grids are, with
        ``batching="packed"`` (default), laid end to end in sequences of at most
        ``max_batch_tokens`` tokens with block-diagonal attention (each image's result equals its
        one-at-a-time encoding; an image longer than the budget runs alone); with ``"grouped"`` they
        run as one batch per grid. The result is padded to the longest sequence (see
        ``SailEncoding.padding_mask``), or with ``packed_output=True`` kept packed (no padding copy).
        """
        if batching not in BATCHING:
            raise InputError(f"batching {batching!r}: choose from {', '.join(BATCHING)}")
        items = self._split_patch_input(patches)
        indices = self.resolve_layers(layers)
        grids = [tuple(item.shape[:2]) for item in items]
        if batching == "packed" and len(set(grids)) > 1:
            with torch.set_grad_enabled(enable_grad):
                encoding = self._encode_packed(items, indices, norm, add_cls, max_batch_tokens)
            return encoding if packed_output else encoding.padded()
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, item in enumerate(items):
            groups[tuple(item.shape[:2])].append(i)
        with torch.set_grad_enabled(enable_grad):
            results = {}
            for grid, members in groups.items():
                batch = torch.stack([items[i] for i in members]) if len(members) > 1 else items[members[0]][None]
                results[grid] = (members, self._forward_batch(batch, indices, norm, add_cls))
        if len(groups) == 1:
            (_, states), = results.values()
        else:
            states = self._assemble(results, grids, indices, add_cls)
        return SailEncoding(hidden_states=states, grids=grids, add_cls=add_cls, num_layers=self.num_layers,
                            norm=norm)

    def _split_patch_input(self, patches) -> list[torch.Tensor]:
        p = self.patch_size
        if isinstance(patches, torch.Tensor):
            if patches.dim() == 5:
                patches = patches[None]
            if patches.dim() != 6:
                raise InputError(f"patches must be (B, nh, nw, 3, {p}, {p}) or (nh, nw, 3, {p}, {p}), "
                                 f"got {tuple(patches.shape)}")
            items = list(patches.unbind(0))
        else:
            items = list(patches)
        if not items:
            raise InputError("no images to encode")
        for item in items:
            if not isinstance(item, torch.Tensor) or item.dim() != 5 or tuple(item.shape[2:]) != (3, p, p):
                shape = tuple(item.shape) if isinstance(item, torch.Tensor) else type(item).__name__
                raise InputError(f"each image's patches must be (nh, nw, 3, {p}, {p}) for this checkpoint's "
                                 f"patch size {p}, got {shape}")
        return items

    def _no_autocast(self):
        """The encoder computes in its own dtype: a caller's autocast (e.g. mmengine's AMP) is switched
        off for the encoder's device, so bf16 weights never run fp16 matmuls and nothing is re-cast."""
        return torch.autocast(self.device.type, enabled=False)

    def embed(self, patches: torch.Tensor, add_cls: bool = False) -> torch.Tensor:
        """Input embeddings (hidden state 0) for a same-grid batch (B, nh, nw, 3, p, p):
        token embeddings of ``<vision> <vpatch>*N </vision> [cls]`` with the patch embedding
        added at each ``<vpatch>``."""
        with self._no_autocast():
            return self._embed(patches, add_cls)

    def _embed(self, patches: torch.Tensor, add_cls: bool) -> torch.Tensor:
        batch, nh, nw = patches.shape[:3]
        n = nh * nw
        row = {role: self.vision_token_embeds[i] for i, role in enumerate(_TOKEN_ROLES)}
        vis = self.vis_embed(patches.reshape(batch, n, -1).to(device=self.device, dtype=self.dtype))
        tail = torch.stack([row["end"], row["cls"]] if add_cls else [row["end"]])
        return torch.cat([row["begin"].expand(batch, 1, -1), row["patch"] + vis,
                          tail.expand(batch, -1, -1)], dim=1)

    def _forward_batch(self, patches: torch.Tensor, indices: Sequence[int], norm: bool,
                       add_cls: bool) -> dict[int, torch.Tensor]:
        with self._no_autocast():
            return self._forward_unautocast(patches, indices, norm, add_cls)

    def _forward_unautocast(self, patches: torch.Tensor, indices: Sequence[int], norm: bool,
                            add_cls: bool) -> dict[int, torch.Tensor]:
        nh, nw = patches.shape[1:3]
        hidden = self._embed(patches, add_cls)
        cos_sin = self._rotary_for_grid(nh, nw, add_cls, hidden.dtype)
        return self._run_blocks(hidden, cos_sin, indices, norm)

    def _encode_packed(self, items: Sequence[torch.Tensor], indices: Sequence[int], norm: bool, add_cls: bool,
                       max_batch_tokens: int) -> SailEncoding:
        """Images of different grids in packed sequences; one packed encoding in input order."""
        extra = 2 + int(add_cls)
        lengths = [int(item.shape[0] * item.shape[1]) + extra for item in items]
        packs = plan_packs(lengths, max_batch_tokens)
        with self._no_autocast():
            results = [self._forward_packed([items[i] for i in pack], indices, norm, add_cls) for pack in packs]
        order = [i for pack in packs for i in pack]
        starts = [0]
        for i in order[:-1]:
            starts.append(starts[-1] + lengths[i])
        offsets = [0] * len(items)
        for i, start in zip(order, starts):
            offsets[i] = start
        states = {k: results[0][k] if len(results) == 1 else torch.cat([r[k] for r in results], dim=1)
                  for k in indices}
        return SailEncoding(hidden_states=states, grids=[tuple(item.shape[:2]) for item in items], add_cls=add_cls,
                            num_layers=self.num_layers, norm=norm, offsets=offsets)

    def packed_kernel(self) -> str:
        """The block-diagonal attention kernel packed sequences run with here."""
        if self.attn_implementation == "eager":
            return "eager (additive block mask)"
        return resolve_packed_attention(self.packed_attention, self.device, self.dtype)

    def _forward_packed(self, items: Sequence[torch.Tensor], indices: Sequence[int], norm: bool,
                        add_cls: bool) -> dict[int, torch.Tensor]:
        """One packed sequence: (1, sum of lengths, D) states per requested layer, images in order."""
        hidden = torch.cat([self._embed(item[None], add_cls) for item in items], dim=1)
        tables = [self._rotary_for_grid(item.shape[0], item.shape[1], add_cls, hidden.dtype) for item in items]
        cos_sin = tuple(torch.cat(parts, dim=1) for parts in zip(*tables))
        lengths = [int(item.shape[0] * item.shape[1]) + 2 + int(add_cls) for item in items]
        if self.attn_implementation == "eager":
            layout = PackedLayout(lengths)
            return self._run_blocks(hidden, cos_sin, indices, norm,
                                    attention_mask=layout.additive_mask(hidden.device, hidden.dtype))
        layout = PackedLayout(lengths, kernel=self.packed_kernel())
        return self._run_blocks(hidden, cos_sin, indices, norm, sail_packing=layout)

    def _run_blocks(self, hidden: torch.Tensor, cos_sin, indices: Sequence[int], norm: bool,
                    attention_mask=None, **attention_kwargs) -> dict[int, torch.Tensor]:
        """Blocks 1..max(indices) on input embeddings; the states of the requested layers."""
        wanted = set(indices)
        kept = {}
        if 0 in wanted:
            kept[0] = self.norm(hidden) if norm else hidden
        for block_index in range(max(indices)):
            hidden = self.layers[block_index](hidden, attention_mask=attention_mask, position_embeddings=cos_sin,
                                              **attention_kwargs)
            k = block_index + 1
            if k in wanted:
                kept[k] = self.norm(hidden) if (norm or k == self.num_layers) else hidden
        return {k: kept[k] for k in indices}

    def _rotary_for_grid(self, nh: int, nw: int, add_cls: bool, dtype: torch.dtype):
        """Rotary (cos, sin) of one image grid, cached (least recently used first out)."""
        key = (nh, nw, add_cls, dtype, self.device)
        tables = self._rotary_tables.get(key)
        if tables is None:
            with torch.no_grad():
                tables = self.rotary(image_position_ids(nh, nw, add_cls).to(self.device), dtype)
            self._rotary_tables[key] = tables
            while len(self._rotary_tables) > ROTARY_CACHE_GRIDS:
                self._rotary_tables.popitem(last=False)
        else:
            self._rotary_tables.move_to_end(key)
        return tables

    def _apply(self, fn, *args, **kwargs):
        self._rotary_tables.clear()  # tables of the old device / dtype would only hold memory
        return super()._apply(fn, *args, **kwargs)

    @staticmethod
    def _assemble(results, grids, indices, add_cls) -> dict[int, torch.Tensor]:
        extra = 2 + int(add_cls)
        seq_max = max(nh * nw for nh, nw in grids) + extra
        states = {}
        for k in indices:
            some = next(iter(results.values()))[1][k]
            out = some.new_zeros(len(grids), seq_max, some.shape[-1])
            for members, group_states in results.values():
                length = group_states[k].shape[1]
                out[members, :length] = group_states[k]
            states[k] = out
        return states

