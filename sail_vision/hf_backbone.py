"""SAIL as a transformers backbone: ``SailBackboneConfig`` + ``SailBackbone`` (``BackboneMixin``).

Importing this module registers both with ``AutoConfig`` / ``AutoBackbone`` under the model type
``sail_vision`` (:func:`register`; ``import sail_vision`` alone never imports transformers' auto
classes), so transformers' dense heads that take a backbone config build on SAIL without code::

    from sail_vision.hf_backbone import SailBackboneConfig
    from transformers import UperNetConfig, UperNetForSemanticSegmentation

    backbone = SailBackboneConfig(checkpoint="ORG/SAIL-7B", out_indices=[8, 16, 24, 32])
    model = UperNetForSemanticSegmentation(UperNetConfig(backbone_config=backbone, num_labels=150))

Stages follow transformers' ViT backbones (DINOv2, ...): ``stem`` is hidden state 0 (the embeddings)
and ``stage{k}`` hidden state k, so ``out_indices`` are sail-vision's hidden-state indices (the last
stage carries the final RMSNorm, ``norm=True`` applies it to every stage). Feature maps are (B, D, H/p,
W/p). The encoder is read from ``checkpoint`` (a local folder or a hub id) by
:meth:`~.encoder.SailEncoder.from_pretrained` with only the blocks up to the deepest out index; with
``frozen=True`` (default) it stays outside the module tree, like ``SAILBackbone`` in mmseg: not in
the state dict (saved heads stay small), never re-initialised, never trained, moved along by
``.to(device)`` / ``.cuda()`` in its own dtype.
"""

from __future__ import annotations

import torch

try:  # transformers 5 (dataclass configs, transformers.backbone_utils); tested with 5.24
    from transformers import PreTrainedConfig, PreTrainedModel
    from transformers.backbone_utils import BackboneConfigMixin, BackboneMixin
except ImportError as exc:  # pragma: no cover - depends on the installed transformers
    import transformers

    raise ImportError(f"sail_vision.hf_backbone needs transformers >= 5 (installed: {transformers.__version__}); "
                      f"the encoder and its timm / DINOv2 methods work with any supported version") from exc
from transformers.modeling_outputs import BackboneOutput

from .devices import resolve_dtype

MODEL_TYPE = "sail_vision"


class SailBackboneConfig(BackboneConfigMixin, PreTrainedConfig):
    """Which SAIL checkpoint and stages a :class:`SailBackbone` uses.

    ``checkpoint``: a local SAIL folder or a hub id ``ORG/NAME[@REVISION]``; its architecture
    (``num_hidden_layers``, ``hidden_size``, ``patch_size``) is read from its config.json when not
    given (a hub id fetches config, tokenizer and weight index only). ``out_indices`` /
    ``out_features``: stages (hidden-state indices, negative from the end; default the last).
    ``norm`` (False): final RMSNorm on every stage. ``compute_dtype`` ("float32"): the encoder's dtype.
    ``frozen`` (True): see the module docstring. ``reshape_hidden_states`` (True): feature maps as
    (B, D, h, w); False gives (B, 1 + h*w, D) token sequences, the ``</vision>`` state first (as a class
    token) then the patches, the layout heads written for ViT backbones read (e.g. DPT, like DINOv2's
    ``reshape_hidden_states=False``).
    """

    model_type = MODEL_TYPE

    checkpoint: str | None = None
    norm: bool = False
    compute_dtype: str = "float32"
    frozen: bool = True
    reshape_hidden_states: bool = True
    num_hidden_layers: int | None = None
    hidden_size: int | None = None
    patch_size: int | None = None
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None

    def __post_init__(self, **kwargs):
        if self.checkpoint is not None and self.num_hidden_layers is None:
            from .checkpoint import open_checkpoint

            sail = open_checkpoint(str(self.checkpoint), weights=False).config
            self.num_hidden_layers, self.hidden_size = sail.num_hidden_layers, sail.hidden_size
            self.patch_size = sail.vision_patch_size
        self.stage_names = ["stem"] + [f"stage{k}" for k in range(1, (self.num_hidden_layers or 0) + 1)]
        self.set_output_features_output_indices(out_indices=kwargs.pop("out_indices", None),
                                                out_features=kwargs.pop("out_features", None))
        super().__post_init__(**kwargs)


class SailBackbone(BackboneMixin, PreTrainedModel):
    """SAIL's hidden states as backbone feature maps (see the module docstring)."""

    config_class = SailBackboneConfig
    config: SailBackboneConfig
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    base_model_prefix = "sail"
    has_attentions = False  # attention maps are not returned (sdpa kernels do not form them)

    def __init__(self, config: SailBackboneConfig):
        from .encoder import SailEncoder
        from .errors import CheckpointError

        super().__init__(config)
        if not config.checkpoint:
            raise CheckpointError("SailBackboneConfig has no checkpoint: pass checkpoint= a SAIL folder or hub id")
        self.num_features = [config.hidden_size] * len(self.stage_names)
        deepest = max(self._stage_layers())
        encoder = SailEncoder.from_pretrained(config.checkpoint, dtype=resolve_dtype(config.compute_dtype),
                                              max_layer=deepest)
        if config.frozen:
            object.__setattr__(self, "_frozen_encoder", encoder)  # not a registered submodule
        else:
            encoder.requires_grad_(True)
            self.sail_encoder = encoder  # post_init marks it initialised (_init_weights does nothing)
        self.post_init()

    @property
    def encoder(self):
        return self._frozen_encoder if self.config.frozen else self.sail_encoder

    def _stage_layers(self) -> list[int]:
        """The hidden-state index of each output stage."""
        return [self.stage_names.index(name) for name in self.out_features]

    def _init_weights(self, module):
        """Nothing to initialise: every weight comes from the SAIL checkpoint."""

    def _apply(self, fn, *args, **kwargs):
        # A frozen encoder is outside the module tree: it follows device moves only, keeping its dtype.
        result = super()._apply(fn, *args, **kwargs)
        if self.config.frozen and "_frozen_encoder" in self.__dict__:
            encoder = self._frozen_encoder
            target = fn(torch.empty(0, device=encoder.device, dtype=encoder.dtype)).device
            if target != encoder.device:
                encoder.to(target)
        return result

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.train(mode and not self.config.frozen)
        return self

    def forward(self, pixel_values: torch.Tensor, output_hidden_states: bool | None = None,
                output_attentions: bool | None = None, return_dict: bool | None = None, **kwargs):
        """Feature maps (B, D, H/p, W/p) of the ``out_features`` stages for a normalised (B, 3, H, W)
        batch (H, W multiples of the patch size); ``hidden_states`` (B, seq, D) of every loaded stage
        when asked."""
        output_hidden_states = (self.config.output_hidden_states if output_hidden_states is None
                                else output_hidden_states)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        encoder = self.encoder
        stages = self._stage_layers()
        layers = list(range(encoder.num_blocks + 1)) if output_hidden_states else stages
        if pixel_values.device != encoder.device:
            encoder.to(pixel_values.device)
        grad = torch.is_grad_enabled() and not self.config.frozen
        encoding = encoder.encode_pixels(pixel_values.to(encoder.dtype), layers, norm=self.config.norm,
                                         enable_grad=grad)
        if self.config.reshape_hidden_states:
            feature_maps = tuple(encoding.patch_maps(k).to(pixel_values.dtype) for k in stages)
        else:
            feature_maps = tuple(torch.cat([encoding.end_token(k)[:, None], encoding.patch_tokens(k)], dim=1)
                                 .to(pixel_values.dtype) for k in stages)
        hidden_states = tuple(encoding.layer(k) for k in layers) if output_hidden_states else None
        if not return_dict:
            return (feature_maps,) + ((hidden_states,) if output_hidden_states else ())
        return BackboneOutput(feature_maps=feature_maps, hidden_states=hidden_states, attentions=None)


def register() -> None:
    """Register the config and model with ``AutoConfig`` / ``AutoBackbone`` (idempotent)."""
    from transformers import AutoBackbone, AutoConfig
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if MODEL_TYPE not in CONFIG_MAPPING:
        AutoConfig.register(MODEL_TYPE, SailBackboneConfig)
    try:
        AutoBackbone.register(SailBackboneConfig, SailBackbone)
    except ValueError:
        pass  # already registered


register()
