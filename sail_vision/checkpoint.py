"""Reading a SAIL checkpoint folder: weight index, vision token ids and selective tensor loads.

A SAIL checkpoint (Hugging Face layout) holds ``config.json``, one ``model.safetensors`` or shards
listed in ``model.safetensors.index.json``, and tokenizer files. Only the tensors an encoder needs
are ever read; ``lm_head`` and blocks past ``max_layer`` stay on disk.

Opening a checkpoint checks, from the safetensors headers alone (no tensor data is read), that every
tensor name is one SAIL has, that the weights hold exactly the layers ``config.json`` says, and that
every tensor is floating point. Shapes are checked as tensors are read; :meth:`SailCheckpoint.find_nonfinite`
scans tensor data for NaN/inf on request.

:func:`open_checkpoint` is where a checkpoint *spec* is resolved: a local folder (``~`` expanded),
or a Hugging Face hub id ``ORG/NAME[@REVISION]`` fetched by :mod:`.hub` with only the shards the
requested layers need (a local folder of the same name keeps priority).
"""

from __future__ import annotations

import json
import re
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import torch

from .config import SailConfig, load_sail_config
from .errors import CheckpointError
from .layer_indices import resolve_layer_indices

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

#: Tensors outside the blocks. ``lm_head.weight`` is known but never read by the encoder.
_TOP_LEVEL_TENSORS = frozenset({"model.embed_tokens.weight", "model.vis_embed.weight", "model.norm.weight",
                                "lm_head.weight"})
#: Per-block weights, ``model.layers.{i}.<suffix>``.
_BLOCK_WEIGHTS = frozenset({
    "self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight", "self_attn.o_proj.weight",
    "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
    "input_layernorm.weight", "post_attention_layernorm.weight",
})
#: Rotary ``inv_freq`` buffers, which checkpoints saved by older transformers versions carry; the
#: encoder computes its own, so they are accepted and never read.
_UNUSED_BLOCK_BUFFERS = frozenset({"self_attn.rotary_emb.inv_freq"})
_UNUSED_TOP_LEVEL_BUFFERS = frozenset({"model.rotary_emb.inv_freq"})
_BLOCK_SUFFIXES = _BLOCK_WEIGHTS | _UNUSED_BLOCK_BUFFERS
_TOP_LEVEL_NAMES = _TOP_LEVEL_TENSORS | _UNUSED_TOP_LEVEL_BUFFERS
_BLOCK_TENSOR = re.compile(r"^model\.layers\.(0|[1-9][0-9]*)\.(.+)$")

#: safetensors dtype codes the weights may have, and readable names for every code.
_FLOAT_DTYPES = frozenset({"F32", "F16", "BF16", "F64"})
_DTYPE_NAMES = {
    "F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16",
    "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
    "I64": "int64", "I32": "int32", "I16": "int16", "I8": "int8",
    "U64": "uint64", "U32": "uint32", "U16": "uint16", "U8": "uint8", "BOOL": "bool",
}
_SHOWN_NAMES = 5


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


def _natural_key(name: str) -> list:
    """Sort key that puts model.layers.2 before model.layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _name_list(names: Iterable[str]) -> str:
    """The first few names, then "and K more"."""
    names = sorted(names, key=_natural_key)
    shown = ", ".join(names[:_SHOWN_NAMES])
    return shown + (f" and {len(names) - _SHOWN_NAMES} more" if len(names) > _SHOWN_NAMES else "")


def _index_ranges(indices: Iterable[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0..2, 5, 7..8"."""
    runs: list[list[int]] = []
    for i in sorted(indices):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs)


@dataclass(frozen=True)
class NonFiniteTensor:
    """A checkpoint tensor with NaN/inf values, stored so or made so by the cast to a run's dtype."""

    name: str
    file: Path
    num_nan: int
    num_inf: int
    numel: int
    #: Set when the stored values are all finite and ``num_inf`` of them overflow this dtype.
    overflows: torch.dtype | None = None

    def describe(self) -> str:
        """One line naming the file and tensor, and what to do about it."""
        if self.overflows is not None:
            dtype = str(self.overflows).removeprefix("torch.")
            return (f"{self.file}: tensor {self.name} is finite as stored, but {self.num_inf} of its {self.numel} "
                    f"values overflow {dtype} (|x| > {torch.finfo(self.overflows).max:.4g}); run with "
                    f"--dtype float32")
        return (f"{self.file}: tensor {self.name} holds {self.num_nan} NaN and {self.num_inf} inf of its "
                f"{self.numel} values: the weights themselves are damaged (no --dtype will help); "
                f"download or convert the checkpoint again")


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
    """A SAIL checkpoint folder: its config, vision token ids and a name -> file weight index.

    ``partial=True`` accepts shard files that are absent (a hub download of only the shards some
    layers need, see :mod:`.hub`): they are listed in ``absent_files`` and reading a tensor they hold
    is a one-line error. ``repo_id`` / ``revision`` (the commit sha) are set for hub checkpoints.
    """

    def __init__(self, path: str | Path, *, partial: bool = False, repo_id: str | None = None,
                 revision: str | None = None):
        self.path = Path(path)
        self.partial = partial
        self.repo_id = repo_id
        self.revision = revision
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path}: not a directory; expected a SAIL checkpoint folder (or a Hugging "
                                  f"Face hub id ORG/NAME[@REVISION])")
        self.config = load_sail_config(self.path)
        self.token_ids = read_vision_token_ids(self.path, self.config.vocab_size)
        self.weight_map = self._index_weights()
        self._check_names()
        #: safetensors dtype code ("F32", "BF16", ...) of every tensor, from the file headers.
        self.tensor_dtypes = self._read_dtypes()
        self._check_dtypes()

    def _check_names(self) -> None:
        """Refuse tensor names SAIL does not have and blocks config.json does not describe (names only)."""
        unknown, beyond = [], []
        held: set[int] = set()
        num_layers = self.config.num_hidden_layers
        for name in self.weight_map:
            match = _BLOCK_TENSOR.match(name)
            if match and match[2] in _BLOCK_SUFFIXES:
                layer = int(match[1])
                if layer >= num_layers:
                    beyond.append(name)
                if match[2] in _BLOCK_WEIGHTS:
                    held.add(layer)
            elif name not in _TOP_LEVEL_NAMES:
                unknown.append(name)
        if unknown:
            first = min(unknown, key=_natural_key)
            raise CheckpointError(
                f"{self.weight_map[first]}: tensor(s) SAIL does not have: {_name_list(unknown)} (biases, a typo "
                f"or another architecture?); use an unmodified SAIL checkpoint")
        absent = set(range(num_layers)) - held
        if beyond or absent:
            holds = f"model.layers.{_index_ranges(held)} ({len(held)} layers" if held else "no layer (0 layers"
            details = "".join([
                f"; layer(s) {_index_ranges(absent)} absent" if absent and held and min(absent) < max(held) else "",
                f"; tensors past the config: {_name_list(beyond)}" if beyond else "",
            ])
            raise CheckpointError(
                f"{self.path}: config.json says {num_layers} layers (num_hidden_layers) but the weights hold "
                f"{holds}{details}); use the config.json that came with these weights, or the weights that match it")

    @property
    def spec(self) -> str:
        """What reopens exactly this checkpoint: ``repo@commit`` for a hub one, else its folder."""
        return f"{self.repo_id}@{self.revision}" if self.repo_id is not None else str(self.path)

    @property
    def absent_files(self) -> list[Path]:
        """Shard files the index lists that are not here (only a ``partial`` checkpoint has any)."""
        return sorted({p for p in self.weight_map.values() if not p.is_file()})

    def files_for(self, names: Iterable[str]) -> list[Path]:
        """The weight files holding the named tensors, sorted."""
        self._require(names, check_present=False)
        return sorted({self.weight_map[name] for name in names})

    def _read_dtypes(self) -> dict[str, str]:
        """Each tensor's dtype code, reading only the safetensors headers (each file opened once);
        the tensors of absent shards (``partial``) are left out."""
        dtypes = {}
        for file, names in self._group_by_file(self.weight_map).items():
            if self.partial and not file.is_file():
                continue
            with self._open(file) as handle:
                available = set(handle.keys())
                for name in names:
                    if name not in available:
                        raise CheckpointError(f"{file}: tensor {name} listed in the index is not in this shard")
                    dtypes[name] = handle.get_slice(name).get_dtype()
        return dtypes

    def _check_dtypes(self) -> None:
        bad = sorted((n for n, code in self.tensor_dtypes.items() if code not in _FLOAT_DTYPES), key=_natural_key)
        if bad:
            name = bad[0]
            code = self.tensor_dtypes[name]
            more = f" ({len(bad) - 1} more tensor(s) are not floating point either)" if len(bad) > 1 else ""
            raise CheckpointError(
                f"{self.weight_map[name]}: tensor {name} has dtype {_DTYPE_NAMES.get(code, code)}{more}; SAIL "
                f"weights must be float32, bfloat16, float16 or float64 (quantized or damaged weights?): use "
                f"the original floating-point checkpoint")

    def _group_by_file(self, names: Iterable[str]) -> dict[Path, list[str]]:
        by_file: dict[Path, list[str]] = {}
        for name in names:
            by_file.setdefault(self.weight_map[name], []).append(name)
        return by_file

    @staticmethod
    def _open(file: Path):
        from safetensors import safe_open

        try:
            return safe_open(file, framework="pt")
        except Exception as exc:  # safetensors raises several error types for corrupt headers
            raise CheckpointError(f"{file}: not a readable safetensors file ({exc})") from None

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
            if absent and not self.partial:
                raise CheckpointError(f"{index_path}: shard file(s) missing: {', '.join(absent)}")
            return files
        if single.is_file():
            with self._open(single) as handle:
                names = list(handle.keys())
            return {name: single for name in names}
        raise CheckpointError(
            f"{self.path}: no {SINGLE_WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE}; SAIL weights must be in "
            f"safetensors format")

    def weight_bytes(self, names: Iterable[str]) -> int:
        """Bytes on disk of the named tensors (from the safetensors headers, nothing is read)."""
        names = list(names)
        self._require(names)
        total = 0
        for file, file_names in self._group_by_file(names).items():
            with self._open(file) as handle:
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
        self._require(shapes)
        row_subsets = row_subsets or {}
        out = {}
        for file, names in self._group_by_file(shapes).items():
            with self._open(file) as handle:  # every name is in its file: checked on opening the checkpoint
                for name in names:
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
                    # moved in its stored dtype, then cast on the device: a rank never makes a private
                    # host copy of a converted tensor (the memory-mapped file is shared by all ranks)
                    out[name] = tensor.to(device=device).to(dtype=dtype)
        return out

    def _require(self, names: Iterable[str], check_present: bool = True) -> None:
        names = list(names)
        missing = [name for name in names if name not in self.weight_map]
        if missing:
            raise CheckpointError(f"{self.path}: tensor(s) missing from the checkpoint: {_name_list(missing)}; "
                                  f"the weights are incomplete: download or convert the checkpoint again")
        if check_present and self.partial:
            absent = sorted({self.weight_map[n].name for n in names if not self.weight_map[n].is_file()})
            if absent:
                where = f"hub checkpoint {self.repo_id}" if self.repo_id else str(self.path)
                raise CheckpointError(
                    f"{where}: shard(s) {', '.join(absent)} were not downloaded (only the shards of the layers "
                    f"asked for are); load again with the deeper max_layer so they are fetched")

    def encoder_files(self, max_layer: int | None = None) -> list[Path]:
        """The weight files an encoder loaded with ``max_layer`` reads (what a hub download fetches)."""
        return self.files_for(self.encoder_tensors(max_layer))

    def encoder_tensors(self, max_layer: int | None = None) -> dict[str, list[int] | None]:
        """The tensors an encoder loaded with ``max_layer`` reads, in forward order: name -> the rows
        read (the six vision-token rows of the embedding table), or None for the whole tensor."""
        num_blocks = self.config.num_hidden_layers
        if max_layer is not None:
            num_blocks = resolve_layer_indices([max_layer], num_blocks)[0]
        rows = [getattr(self.token_ids, role) for role in VISION_TOKENS]
        names = [n for n in expected_tensor_shapes(self.config, num_blocks) if n != "model.norm.weight"]
        out: dict[str, list[int] | None] = dict.fromkeys([*names, "model.norm.weight"])
        out["model.embed_tokens.weight"] = rows
        return out

    def find_nonfinite(self, names: Iterable[str] | None = None, *, max_layer: int | None = None,
                       dtype: str | torch.dtype | None = None) -> NonFiniteTensor | None:
        """The first tensor (in forward order) holding NaN/inf, or None if all are finite.

        By default scans what an encoder with ``max_layer`` reads (:meth:`encoder_tensors`: blocks 1..k, the
        patch embedding, the final norm and the six vision-token embedding rows); ``names`` scans those whole
        tensors instead. With ``dtype`` (the run's compute dtype), finite values that overflow it when cast
        are reported too (``NonFiniteTensor.overflows``), telling damaged weights from a dtype problem.

        Cost: this reads the tensor data, unlike opening the checkpoint (headers only): about 0.44 GB per
        SAIL-7B block in bfloat16 (0.87 GB in float32), ~14 GB for all 32 blocks, at disk speed. One tensor
        is held at a time. So it is not run on load: call it to diagnose a NaN/inf seen in a run's outputs.
        """
        targets = self.encoder_tensors(max_layer) if names is None else dict.fromkeys(names)
        self._require(targets)
        cast = None
        if dtype is not None:
            from .devices import resolve_dtype

            cast = resolve_dtype(dtype)
        with ExitStack() as stack:
            handles = {}
            for name, rows in targets.items():
                file = self.weight_map[name]
                if file not in handles:
                    handles[file] = stack.enter_context(self._open(file))
                if rows is None:
                    tensor = handles[file].get_tensor(name)
                else:
                    piece = handles[file].get_slice(name)
                    tensor = torch.stack([piece[r:r + 1][0] for r in rows])
                found = _nonfinite(name, file, tensor, cast)
                if found is not None:
                    return found
        return None

    def check_finite(self, names: Iterable[str] | None = None, *, max_layer: int | None = None,
                     dtype: str | torch.dtype | None = None) -> None:
        """Raise CheckpointError naming the first non-finite tensor :meth:`find_nonfinite` finds (same
        arguments, same cost: it reads the tensor data)."""
        found = self.find_nonfinite(names, max_layer=max_layer, dtype=dtype)
        if found is not None:
            raise CheckpointError(found.describe())


def open_checkpoint(spec: str | Path, *, max_layer: int | None = None, weights: bool = True,
                    progress: bool = True) -> SailCheckpoint:
    """Resolve a checkpoint spec and open it.

    ``spec`` is a local folder (``~`` expanded) or a Hugging Face hub id ``ORG/NAME[@REVISION]``; an
    existing local folder wins when a spec could be both. A hub id is fetched into the Hugging Face
    cache with only the shards an encoder with ``max_layer`` reads (see :mod:`.hub`), so the result
    may be ``partial``; ``weights=False`` fetches no shard at all (config, tokenizer and index only);
    ``progress`` shows the hub's progress bars.
    """
    from . import hub

    local = Path(str(spec)).expanduser()
    if isinstance(spec, Path) or local.exists() or not hub.is_hub_id(str(spec)):
        return SailCheckpoint(local)
    return hub.fetch_checkpoint(str(spec), max_layer=max_layer, weights=weights, progress=progress)


def checkpoint_source(ckpt: SailCheckpoint) -> dict:
    """Where a checkpoint came from, for manifests: its folder, and its hub repo and commit if any."""
    source = {"path": str(ckpt.path.absolute())}
    if ckpt.repo_id is not None:
        source.update(repo_id=ckpt.repo_id, revision=ckpt.revision)
    return source


def _nonfinite(name: str, file: Path, tensor: torch.Tensor, cast: torch.dtype | None) -> NonFiniteTensor | None:
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        num_nan = int(torch.isnan(tensor).sum())
        return NonFiniteTensor(name, file, num_nan, int((~finite).sum()) - num_nan, tensor.numel())
    if cast is not None and cast != tensor.dtype:
        overflow = int((~torch.isfinite(tensor.to(cast))).sum())
        if overflow:
            return NonFiniteTensor(name, file, 0, overflow, tensor.numel(), overflows=cast)
    return None


_DTYPE_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I8": 1, "U8": 1}
