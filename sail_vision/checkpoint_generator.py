"""Writing seeded random checkpoints in SAIL's exact on-disk format.

Tests, the demo and the benchmarks use these instead of the real (unreachable) weights. Tensors
are generated one at a time and written shard by shard, so a SAIL-7B-shaped checkpoint never sits
in memory whole. Each tensor's values depend only on (seed, tensor name), not on sharding.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import torch

from .checkpoint import SINGLE_WEIGHTS_FILE, VISION_TOKENS, WEIGHTS_INDEX_FILE, expected_tensor_shapes
from .config import SailConfig, sail_config_from_dict
from .errors import SailVisionError

PRESETS: dict[str, dict] = {
    # Same shape family as the shared reference fixture: 4 blocks, head_dim 128, patch 8.
    "tiny": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=2,
                 num_key_value_heads=1, vocab_size=96, vision_patch_size=8),
    # A moderate model for benchmarks: 12 blocks of width 1024, GQA 8:2, patch 32.
    "small": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=32000, vision_patch_size=32),
    # The real SAIL-7B shape (Mistral-7B plus a 32x32 patch embedding).
    "sail-7b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                    num_key_value_heads=8, vocab_size=32000, vision_patch_size=32),
}
_COMMON = dict(rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="silu")
_TORCH_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def preset_config(preset: str, **overrides) -> SailConfig:
    """A preset's SailConfig with optional field overrides (e.g. num_hidden_layers=2)."""
    if preset not in PRESETS:
        raise SailVisionError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    known = set(SailConfig.__dataclass_fields__)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise SailVisionError(f"unknown config field(s) {', '.join(unknown)}; settable fields: "
                              f"{', '.join(sorted(known))}")
    fields = {**_COMMON, **PRESETS[preset], **overrides}
    return sail_config_from_dict({"model_type": "mistral", **fields}, source=f"preset {preset}")


def _init_spec(name: str, cfg: SailConfig) -> tuple[str, float, float]:
    """(distribution, a, b) for a tensor: like the reference fixture's seeded init, so that
    activations neither vanish nor explode across blocks."""
    d, f = cfg.hidden_size, cfg.intermediate_size
    if name.endswith("layernorm.weight") or name == "model.norm.weight":
        return "uniform", 0.6, 1.4
    if name == "model.embed_tokens.weight":
        return "normal", 0.0, 1.0
    if name == "model.vis_embed.weight":
        return "normal", 0.0, 1.0 / math.sqrt(cfg.patch_dim)
    if name.endswith(("q_proj.weight", "k_proj.weight")):
        return "normal", 0.0, 1.5 / math.sqrt(d)
    if name.endswith("down_proj.weight"):
        return "normal", 0.0, 1.0 / math.sqrt(f)
    return "normal", 0.0, 1.0 / math.sqrt(d)


def _random_tensor(name: str, shape, cfg: SailConfig, seed: int, dtype: torch.dtype) -> torch.Tensor:
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    kind, a, b = _init_spec(name, cfg)
    out = torch.empty(shape, dtype=torch.float32)
    if kind == "uniform":
        out.uniform_(a, b, generator=gen)
    else:
        out.normal_(a, b, generator=gen)
    return out.to(dtype)


def vision_token_start(cfg: SailConfig) -> int:
    """Where the generator places the six vision tokens: near the end, never at the start."""
    return max(3, cfg.vocab_size - 2 * len(VISION_TOKENS))


def write_tokenizer(out_dir: Path, cfg: SailConfig) -> dict[str, int]:
    """A word-level tokenizer whose added tokens are SAIL's six vision tokens; returns their ids."""
    from tokenizers import AddedToken, Tokenizer
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import WhitespaceSplit
    from transformers import PreTrainedTokenizerFast

    start = vision_token_start(cfg)
    if start + len(VISION_TOKENS) > cfg.vocab_size:
        raise SailVisionError(f"vocab_size {cfg.vocab_size} is too small for the vision tokens")
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for i in range(3, start):
        vocab[f"w{i:05d}"] = i
    ids = {}
    for offset, text in enumerate(VISION_TOKENS.values()):
        vocab[text] = ids[text] = start + offset
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = WhitespaceSplit()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in ["<unk>", "<s>", "</s>", *VISION_TOKENS.values()]])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=list(VISION_TOKENS.values()))
    fast.save_pretrained(str(out_dir))
    # tokenizer_config.json and special_tokens_map.json as SAIL's checkpoints (transformers 4.42) have them.
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    added = {str(vocab[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                             "single_word": False, "special": True}
             for t in ["<unk>", "<s>", "</s>", *VISION_TOKENS.values()]}
    tok_cfg = {"added_tokens_decoder": added, "additional_special_tokens": list(VISION_TOKENS.values()),
               **special, "clean_up_tokenization_spaces": True, "model_max_length": 1048576,
               "tokenizer_class": "PreTrainedTokenizerFast"}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    (out_dir / "special_tokens_map.json").write_text(json.dumps(
        {"additional_special_tokens": list(VISION_TOKENS.values()), **special}, indent=2) + "\n")
    return ids


def make_checkpoint(out_dir: str | Path, preset: str = "tiny", *, seed: int = 0,
                    dtype: str | torch.dtype = torch.float32, max_shard_bytes: int = 2 * 1024**3,
                    overwrite: bool = False, progress: bool = False, **overrides) -> Path:
    """Write a random SAIL checkpoint (config.json, safetensors, tokenizer) to ``out_dir``.

    The folder is built under ``<out_dir>.partial`` and renamed when complete, so an interrupted
    run never leaves something that looks like a finished checkpoint.
    """
    from safetensors.torch import save_file

    from .devices import resolve_dtype

    dtype = resolve_dtype(dtype)
    cfg = preset_config(preset, **overrides)
    out_dir = Path(out_dir)
    if out_dir.exists():
        if not overwrite and (not out_dir.is_dir() or any(out_dir.iterdir())):
            raise SailVisionError(f"{out_dir}: already exists and is not empty; pass overwrite=True "
                                  f"(--overwrite) to replace it")
    tmp = out_dir.with_name(out_dir.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    shapes = {**expected_tensor_shapes(cfg), "lm_head.weight": (cfg.vocab_size, cfg.hidden_size)}
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards: list[list[str]] = [[]]
    used = 0
    for name, shape in shapes.items():
        size = math.prod(shape) * itemsize
        if shards[-1] and used + size > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += size
    files = ([SINGLE_WEIGHTS_FILE] if len(shards) == 1 else
             [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(shapes), desc=f"writing {preset} checkpoint", unit="tensor")
    weight_map = {}
    for file, names in zip(files, shards):
        tensors = {}
        for name in names:
            tensors[name] = _random_tensor(name, shapes[name], cfg, seed, dtype)
            weight_map[name] = file
            if bar:
                bar.update()
        save_file(tensors, str(tmp / file), metadata={"format": "pt"})
        del tensors
    if bar:
        bar.close()
    if len(files) > 1:
        total = sum(math.prod(s) * itemsize for s in shapes.values())
        (tmp / WEIGHTS_INDEX_FILE).write_text(json.dumps(
            {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))

    token_ids = write_tokenizer(tmp, cfg)
    config = {
        "architectures": ["SailForCausalLM"], "model_type": "mistral",
        **{k: v for k, v in cfg.to_dict().items()},
        "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "initializer_range": 0.02,
        "max_position_embeddings": 131072, "sliding_window": 4096, "tie_word_embeddings": False,
        "torch_dtype": _TORCH_DTYPE_NAMES[dtype], "use_cache": True,
        "sail_vision_generator": {"preset": preset, "seed": seed, "vision_token_ids": token_ids},
    }
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir


def cached_checkpoint(path: str | Path, preset: str = "tiny", *, seed: int = 0,
                      dtype: str | torch.dtype = torch.float32, progress: bool = False,
                      **overrides) -> tuple[Path, bool]:
    """(path, made_now): reuse the random checkpoint at ``path`` if it opens as a SAIL checkpoint,
    else (missing or damaged) write it there. Used by the demo and the benchmarks."""
    from .checkpoint import SailCheckpoint

    path = Path(path)
    if path.is_dir():
        try:
            SailCheckpoint(path)
            return path, False
        except SailVisionError:
            pass  # a damaged cache entry: write it again
    path.parent.mkdir(parents=True, exist_ok=True)
    return make_checkpoint(path, preset, seed=seed, dtype=dtype, overwrite=True, progress=progress,
                           **overrides), True
