"""Reading a SAIL checkpoint folder: weight index, vision token ids and selective tensor loads.

A SAIL checkpoint (Hugging Face layout) holds ``config.json``, one ``model.safetensors`` or shards
listed in ``model.safetensors.index.json``, and tokenizer files. Only the tensors an encoder needs
are ever read; ``lm_head`` and blocks past ``max_layer`` stay on disk.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch

from .config import SailConfig, load_sail_config
from .errors import CheckpointError

SINGLE_WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"

#: The six vision tokens SAIL adds to Mistral's vocabulary, by role.
VISION_TOKENS = {
    "begin": "<vision>",
    "patch": "<vpatch>",
    "row_sep": "<vrow_sep>",
    "frame_sep": "<vframe_sep>",
    "end": "</vision>",
    "cls": "<|vis_cls|>",
}

_KNOWN_TENSOR = re.compile(
    r"^(lm_head\.weight|model\.embed_tokens\.weight|model\.vis_embed\.weight|model\.norm\.weight"
    r"|model\.layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj"
    r"|input_layernorm|post_attention_layernorm)\.weight)$")


@dataclass(frozen=True)
class VisionTokenIds:
    """Token ids of SAIL's vision tokens, as a checkpoint's tokenizer defines them."""

    begin: int
    patch: int
    row_sep: int
    frame_sep: int
    end: int
    cls: int


def expected_tensor_shapes(cfg: SailConfig, num_layers: int | None = None) -> dict[str, tuple[int, ...]]:
    """Names and shapes of SAIL's tensors for blocks 1..num_layers (all blocks by default)."""
    n = cfg.num_hidden_layers if num_layers is None else num_layers
    d, f, hd = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    kv = cfg.num_key_value_heads * hd
    shapes = {
        "model.embed_tokens.weight": (cfg.vocab_size, d),
        "model.vis_embed.weight": (d, cfg.patch_dim),
        "model.norm.weight": (d,),
    }
    for i in range(n):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (cfg.num_attention_heads * hd, d),
            p + "self_attn.k_proj.weight": (kv, d),
            p + "self_attn.v_proj.weight": (kv, d),
            p + "self_attn.o_proj.weight": (d, cfg.num_attention_heads * hd),
            p + "mlp.gate_proj.weight": (f, d),
            p + "mlp.up_proj.weight": (f, d),
            p + "mlp.down_proj.weight": (d, f),
            p + "input_layernorm.weight": (d,),
            p + "post_attention_layernorm.weight": (d,),
        })
    return shapes


def read_vision_token_ids(checkpoint_dir: str | Path, vocab_size: int | None = None) -> VisionTokenIds:
    """Look up the vision token ids in the tokenizer files beside the weights.

    Searches ``tokenizer.json`` (added tokens, then the model vocabulary), ``tokenizer_config.json``
    (``added_tokens_decoder``) and ``added_tokens.json``; ids are never assumed.
    """
    root = Path(checkpoint_dir)
    found: dict[str, int] = {}
    tried = []

    def load(name):
        path = root / name
        if not path.is_file():
            return None
        tried.append(name)
        try:
            return json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: not valid JSON ({exc})") from None

    tok = load("tokenizer.json")
    if isinstance(tok, dict):
        for entry in tok.get("added_tokens") or []:
            found.setdefault(entry.get("content"), entry.get("id"))
        vocab = (tok.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):
            for content, idx in vocab.items():
                found.setdefault(content, idx)
    tok_cfg = load("tokenizer_config.json")
    if isinstance(tok_cfg, dict):
        for idx, entry in (tok_cfg.get("added_tokens_decoder") or {}).items():
            found.setdefault(entry.get("content"), int(idx))
    added = load("added_tokens.json")
    if isinstance(added, dict):
        for content, idx in added.items():
            found.setdefault(content, idx)

    missing = [text for text in VISION_TOKENS.values() if not isinstance(found.get(text), int)]
    if missing:
        where = ", ".join(tried) if tried else "no tokenizer.json / tokenizer_config.json / added_tokens.json"
        raise CheckpointError(
            f"{root}: vision token(s) {', '.join(missing)} not found in the tokenizer files ({where}). "
            f"Copy SAIL's tokenizer files into the checkpoint folder.")
    ids = {role: found[text] for role, text in VISION_TOKENS.items()}
    if vocab_size is not None:
        bad = {VISION_TOKENS[r]: i for r, i in ids.items() if not 0 <= i < vocab_size}
        if bad:
            raise CheckpointError(f"{root}: vision token ids {bad} are outside the embedding table "
                                  f"(vocab_size {vocab_size})")
    return VisionTokenIds(**ids)


class SailCheckpoint:
    """A SAIL checkpoint folder: its config, vision token ids and a name -> file weight index."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a directory; expected a SAIL checkpoint folder")
        self.config = load_sail_config(self.path)
        self.token_ids = read_vision_token_ids(self.path, self.config.vocab_size)
        self.weight_map = self._index_weights()
        unknown = sorted(n for n in self.weight_map if not _KNOWN_TENSOR.match(n))
        if unknown:
            raise CheckpointError(
                f"{self.path}: tensors SAIL does not have: {', '.join(unknown[:5])}"
                f"{' ...' if len(unknown) > 5 else ''} (biases or another architecture?)")

    def _index_weights(self) -> dict[str, Path]:
        index_path = self.path / WEIGHTS_INDEX_FILE
        single = self.path / SINGLE_WEIGHTS_FILE
        if index_path.is_file():
            try:
                index = json.loads(index_path.read_text())
                weight_map = index["weight_map"]
                assert isinstance(weight_map, dict)
            except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AssertionError):
                raise CheckpointError(f"{index_path}: malformed index (needs a 'weight_map' object)") from None
            files = {name: self.path / shard for name, shard in weight_map.items()}
            absent = sorted({str(p.name) for p in files.values() if not p.is_file()})
            if absent:
                raise CheckpointError(f"{index_path}: shard file(s) missing: {', '.join(absent)}")
            return files
        if single.is_file():
            from safetensors import safe_open

            try:
                with safe_open(single, framework="pt") as handle:
                    names = list(handle.keys())
            except Exception as exc:  # safetensors raises several error types for corrupt headers
                raise CheckpointError(f"{single}: not a readable safetensors file ({exc})") from None
            return {name: single for name in names}
        raise CheckpointError(
            f"{self.path}: no {SINGLE_WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}; SAIL weights must be in "
            f"safetensors format")

    def weight_bytes(self, names: Iterable[str]) -> int:
        """Bytes on disk of the named tensors (from the safetensors headers, nothing is read)."""
        from safetensors import safe_open

        total = 0
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.weight_map[name], []).append(name)
        for file, file_names in by_file.items():
            with safe_open(file, framework="pt") as handle:
                for name in file_names:
                    sl = handle.get_slice(name)
                    numel = 1
                    for s in sl.get_shape():
                        numel *= s
                    total += numel * _DTYPE_BYTES.get(sl.get_dtype(), 4)
        return total

    def read_tensors(self, shapes: Mapping[str, tuple[int, ...]], *, dtype: torch.dtype,
                     device: str | torch.device = "cpu",
                     row_subsets: Mapping[str, list[int]] | None = None) -> dict[str, torch.Tensor]:
        """Read the named tensors, checking each shape, cast to ``dtype`` on ``device``.

        ``row_subsets`` maps a tensor name to the rows to read (e.g. a few embedding rows), so the
        rest of that tensor is never loaded. Files are opened one at a time.
        """
        from safetensors import safe_open

        missing = [name for name in shapes if name not in self.weight_map]
        if missing:
            raise CheckpointError(
                f"{self.path}: tensor(s) missing from the checkpoint: {', '.join(missing[:5])}"
                f"{' ...' if len(missing) > 5 else ''}")
        row_subsets = row_subsets or {}
        by_file: dict[Path, list[str]] = {}
        for name in shapes:
            by_file.setdefault(self.weight_map[name], []).append(name)
        out = {}
        for file, names in by_file.items():
            try:
                handle_cm = safe_open(file, framework="pt")
            except Exception as exc:
                raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from None
            with handle_cm as handle:
                available = set(handle.keys())
                for name in names:
                    if name not in available:
                        raise CheckpointError(f"{file}: tensor {name} listed in the index is not in this shard")
                    sl = handle.get_slice(name)
                    shape = tuple(sl.get_shape())
                    if shape != tuple(shapes[name]):
                        raise CheckpointError(
                            f"{file}: tensor {name} has shape {list(shape)}, config.json implies "
                            f"{list(shapes[name])}")
                    rows = row_subsets.get(name)
                    if rows is None:
                        tensor = handle.get_tensor(name)
                    else:
                        tensor = torch.stack([sl[r:r + 1][0] for r in rows])
                    out[name] = tensor.to(device=device, dtype=dtype)
        return out


_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I8": 1, "U8": 1}
