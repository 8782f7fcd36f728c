"""SAIL's model configuration: parsing and validating a checkpoint's ``config.json``."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import CheckpointError

#: SAIL's 3-D rotary embedding splits the head's 64 frequency pairs into (t, h, w) sections of
#: these sizes. Upstream hard-codes them, so only head_dim = 2 * sum(ROPE_SECTIONS) = 128 runs.
ROPE_SECTIONS = (0, 32, 32)
ROPE_HEAD_DIM = 2 * sum(ROPE_SECTIONS)

_REQUIRED_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "vocab_size", "vision_patch_size",
)


@dataclass(frozen=True)
class SailConfig:
    """The architecture fields sail-vision needs from a SAIL ``config.json``."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    vision_patch_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    hidden_act: str = "silu"

    @property
    def head_dim(self) -> int:
        """Per-head width; upstream SAIL derives it as hidden_size // num_attention_heads."""
        return self.hidden_size // self.num_attention_heads

    @property
    def patch_dim(self) -> int:
        """Length of one flattened patch: 3 * p * p."""
        return 3 * self.vision_patch_size**2

    def to_dict(self) -> dict:
        return asdict(self)

    def fingerprint(self) -> str:
        """A short stable hash of the architecture, for manifests."""
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_mistral_config(self, attn_implementation: str = "sdpa"):
        """The transformers ``MistralConfig`` whose decoder blocks SAIL's blocks are."""
        from transformers import MistralConfig

        from .attention import mistral_attention_name

        cfg = MistralConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            rope_theta=self.rope_theta,
            hidden_act=self.hidden_act,
            sliding_window=None,
            attention_dropout=0.0,
        )
        cfg._attn_implementation = mistral_attention_name(attn_implementation)
        return cfg

    def validate(self, source: str = "config") -> None:
        """Raise CheckpointError if SAIL cannot run with these values."""
        for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "vocab_size", "vision_patch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise CheckpointError(f"{source}: {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise CheckpointError(
                f"{source}: hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}")
        if self.head_dim != ROPE_HEAD_DIM:
            raise CheckpointError(
                f"{source}: head_dim is {self.head_dim} (hidden_size {self.hidden_size} / "
                f"{self.num_attention_heads} heads) but SAIL's 3-D rotary sections {list(ROPE_SECTIONS)} "
                f"need head_dim {ROPE_HEAD_DIM}; this checkpoint is not a SAIL model")
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(
                f"{source}: num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}")
        if self.hidden_act != "silu":
            raise CheckpointError(f"{source}: hidden_act {self.hidden_act!r} is not SAIL's 'silu'")
        if not (self.rms_norm_eps > 0 and self.rope_theta > 0):
            raise CheckpointError(f"{source}: rms_norm_eps and rope_theta must be positive")


def load_sail_config(checkpoint_dir: str | Path) -> SailConfig:
    """Read and validate ``config.json`` in a SAIL checkpoint folder."""
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{path}: not found. Point --checkpoint at a SAIL checkpoint folder (config.json, "
            f"*.safetensors, tokenizer files), e.g. one made by `huggingface-cli download "
            f"ByteDance-Seed/SAIL-7B-PT --local-dir DIR` or `sail-vision make-checkpoint`.")
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    return sail_config_from_dict(raw, source=str(path))


def sail_config_from_dict(raw: dict, source: str = "config") -> SailConfig:
    """Build a SailConfig from a parsed ``config.json`` (checks model_type and SAIL fields)."""
    model_type = raw.get("model_type")
    if model_type != "mistral":
        raise CheckpointError(f"{source}: model_type is {model_type!r}, SAIL checkpoints say 'mistral'")
    missing = [name for name in _REQUIRED_FIELDS if name not in raw]
    if missing:
        hint = " (vision_patch_size marks a SAIL checkpoint; a plain Mistral has none)" \
            if "vision_patch_size" in missing else ""
        raise CheckpointError(f"{source}: missing field(s) {', '.join(missing)}{hint}")
    heads = raw["num_attention_heads"]
    explicit_head_dim = raw.get("head_dim")
    cfg = SailConfig(
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        vocab_size=raw["vocab_size"],
        vision_patch_size=raw["vision_patch_size"],
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        rope_theta=float(raw.get("rope_theta", 10000.0)),
        hidden_act=raw.get("hidden_act", "silu"),
    )
    cfg.validate(source)
    if explicit_head_dim is not None and explicit_head_dim != cfg.head_dim:
        raise CheckpointError(
            f"{source}: head_dim {explicit_head_dim} disagrees with hidden_size / num_attention_heads "
            f"= {cfg.head_dim}, which is what SAIL computes with")
    return cfg
