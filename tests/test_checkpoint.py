"""Bad checkpoints give errors that name the file or value at fault."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from sail_vision import CheckpointError, SailEncoder, load_sail_config
from sail_vision.checkpoint import SailCheckpoint, read_vision_token_ids
from sail_vision.checkpoint_generator import make_checkpoint


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, dst)
    return dst


def _edit_config(path, **changes):
    cfg = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    (path / "config.json").write_text(json.dumps(cfg))


def test_missing_config(ckpt):
    (ckpt / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"config\.json: not found"):
        SailEncoder.from_pretrained(ckpt)


def test_not_a_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        SailEncoder.from_pretrained(tmp_path / "nope")


def test_malformed_config(ckpt):
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_sail_config(ckpt)


@pytest.mark.parametrize("changes, match", [
    ({"model_type": "llama"}, "model_type is 'llama'"),
    ({"vision_patch_size": None}, "missing field.*vision_patch_size"),
    ({"hidden_size": 512}, "head_dim is 256"),
    ({"num_attention_heads": 2, "hidden_size": 256, "head_dim": 64}, "head_dim 64 disagrees"),
    ({"num_key_value_heads": 3}, "not a multiple"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"num_hidden_layers": 0}, "positive integer"),
])
def test_invalid_config_values(ckpt, changes, match):
    _edit_config(ckpt, **changes)
    with pytest.raises(CheckpointError, match=match):
        load_sail_config(ckpt)


def test_missing_tensor_and_wrong_shape(ckpt):
    weights = load_file(ckpt / "model.safetensors")
    del weights["model.layers.1.mlp.up_proj.weight"]
    save_file(weights, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: model\.layers\.1\.mlp\.up_proj"):
        SailEncoder.from_pretrained(ckpt)
    # a shallow encoder does not need the missing block
    assert len(SailEncoder.from_pretrained(ckpt, max_layer=1).layers) == 1
    weights["model.layers.1.mlp.up_proj.weight"] = torch.zeros(7, 256)
    save_file(weights, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"up_proj\.weight has shape \[7, 256\].*\[512, 256\]"):
        SailEncoder.from_pretrained(ckpt)


def test_unknown_tensors_are_refused(ckpt):
    weights = load_file(ckpt / "model.safetensors")
    weights["model.layers.0.self_attn.q_proj.bias"] = torch.zeros(256)
    save_file(weights, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"q_proj\.bias"):
        SailCheckpoint(ckpt)


def test_corrupt_and_missing_weights(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        SailCheckpoint(ckpt)
    (ckpt / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        SailCheckpoint(ckpt)


def test_sharded_checkpoint_missing_shard(tmp_path):
    out = make_checkpoint(tmp_path / "sharded", "tiny", max_shard_bytes=1_500_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    (out / shards[1]).unlink()
    with pytest.raises(CheckpointError, match=f"shard file\\(s\\) missing: {shards[1]}"):
        SailCheckpoint(out)
    (out / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(CheckpointError, match="malformed index"):
        SailCheckpoint(out)


def test_tensor_missing_from_its_shard(tmp_path):
    out = make_checkpoint(tmp_path / "sharded", "tiny", max_shard_bytes=1_500_000)
    index_path = out / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name = "model.layers.0.mlp.down_proj.weight"
    other = next(f for n, f in index["weight_map"].items() if f != index["weight_map"][name])
    index["weight_map"][name] = other
    index_path.write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=f"{name} listed in the index is not in this shard"):
        SailEncoder.from_pretrained(out)


def test_vision_tokens_absent(ckpt):
    tok = json.loads((ckpt / "tokenizer.json").read_text())
    tok["added_tokens"] = [t for t in tok["added_tokens"] if t["content"] != "<|vis_cls|>"]
    tok["model"]["vocab"].pop("<|vis_cls|>")
    (ckpt / "tokenizer.json").write_text(json.dumps(tok))
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    cfg["added_tokens_decoder"] = {k: v for k, v in cfg.get("added_tokens_decoder", {}).items()
                                   if v["content"] != "<|vis_cls|>"}
    (ckpt / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"<\|vis_cls\|> not found in the tokenizer files"):
        SailEncoder.from_pretrained(ckpt)


def test_vision_token_ids_from_tokenizer_config_only(ckpt):
    """Older checkpoints may carry the ids only in tokenizer_config.json's added_tokens_decoder."""
    want = read_vision_token_ids(ckpt)
    (ckpt / "tokenizer.json").unlink()
    cfg = json.loads((ckpt / "tokenizer_config.json").read_text())
    assert "added_tokens_decoder" in cfg
    assert read_vision_token_ids(ckpt) == want
    (ckpt / "tokenizer_config.json").unlink()
    with pytest.raises(CheckpointError, match="no tokenizer.json"):
        read_vision_token_ids(ckpt)


def test_vision_token_id_outside_vocab(ckpt):
    _edit_config(ckpt, vocab_size=50)
    weights = load_file(ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="outside the embedding table"):
        SailCheckpoint(ckpt)
    assert weights  # the weights were untouched: the tokenizer check fires first


def test_weight_bytes_counts_headers(tiny_checkpoint):
    ckpt = SailCheckpoint(tiny_checkpoint)
    one = ckpt.weight_bytes(["model.norm.weight"])
    assert one == 256 * 4
    assert ckpt.weight_bytes(ckpt.weight_map) == sum(t.numel() * 4 for t in load_file(
        tiny_checkpoint / "model.safetensors").values())


# ------------------------------------------------------------------ strict loading: names, layers, dtypes
def _edit_weights(path, edit):
    """Load model.safetensors, let ``edit`` change the dict of tensors, write it back."""
    weights = load_file(path / "model.safetensors")
    edit(weights)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize("dtype, shown", [(torch.int32, "int32"), (torch.int8, "int8"), (torch.bool, "bool"),
                                          (torch.uint8, "uint8")])
def test_non_floating_weights_are_refused(ckpt, dtype, shown):
    name = "model.layers.3.mlp.up_proj.weight"
    _edit_weights(ckpt, lambda w: w.update({name: w[name].to(dtype)}))
    with pytest.raises(CheckpointError) as info:
        SailCheckpoint(ckpt)  # refused on opening, before any block is read (even block 4 of 4)
    message = str(info.value)
    assert message.startswith(f"{ckpt / 'model.safetensors'}: tensor {name} has dtype {shown};")
    assert "float32, bfloat16, float16 or float64" in message and "\n" not in message
    with pytest.raises(CheckpointError, match=name):
        SailEncoder.from_pretrained(ckpt, max_layer=1)


def test_non_floating_unused_tensor_is_refused_and_counted(ckpt):
    def edit(w):
        w["lm_head.weight"] = w["lm_head.weight"].to(torch.int8)
        w["model.layers.0.input_layernorm.weight"] = w["model.layers.0.input_layernorm.weight"].to(torch.int32)

    _edit_weights(ckpt, edit)
    with pytest.raises(CheckpointError, match=r"tensor lm_head\.weight has dtype int8 "
                                              r"\(1 more tensor\(s\) are not floating point"):
        SailCheckpoint(ckpt)


def test_any_floating_dtype_is_accepted(ckpt, tiny_encoder):
    def edit(w):
        w["model.layers.0.mlp.up_proj.weight"] = w["model.layers.0.mlp.up_proj.weight"].double()
        w["model.norm.weight"] = w["model.norm.weight"].half()
        w["model.vis_embed.weight"] = w["model.vis_embed.weight"].bfloat16()

    _edit_weights(ckpt, edit)
    assert SailCheckpoint(ckpt).tensor_dtypes["model.layers.0.mlp.up_proj.weight"] == "F64"
    encoder = SailEncoder.from_pretrained(ckpt)
    assert encoder.layers[0].mlp.up_proj.weight.dtype == torch.float32
    assert torch.equal(encoder.layers[0].mlp.up_proj.weight, tiny_encoder.layers[0].mlp.up_proj.weight)


def test_non_floating_weights_in_a_shard_name_the_shard(tmp_path):
    out = make_checkpoint(tmp_path / "sharded", "tiny", max_shard_bytes=1_500_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    name = "model.layers.3.self_attn.o_proj.weight"
    shard = out / index["weight_map"][name]
    assert shard.name != sorted(set(index["weight_map"].values()))[0]  # not the first file
    weights = load_file(shard)
    weights[name] = weights[name].to(torch.int32)
    save_file(weights, shard, metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=f"^{shard}: tensor {name} has dtype int32"):
        SailCheckpoint(out)


@pytest.mark.parametrize("old, new", [
    ("model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.q_proj.weigth"),
    ("model.vis_embed.weight", "model.vis_embeds.weight"),
    ("model.layers.1.mlp.up_proj.weight", "model.layers.01.mlp.up_proj.weight"),
    ("lm_head.weight", "model.lm_head.weight"),
])
def test_misnamed_tensors_are_refused(ckpt, old, new):
    _edit_weights(ckpt, lambda w: w.update({new: w.pop(old)}))
    with pytest.raises(CheckpointError) as info:
        SailCheckpoint(ckpt)
    assert str(info.value).startswith(f"{ckpt / 'model.safetensors'}: tensor(s) SAIL does not have: {new} (")


def test_unknown_tensor_list_is_capped(ckpt):
    def edit(w):
        w.update({f"model.layers.{i}.mlp.up_proj.bias": torch.zeros(512) for i in range(4)})
        w.update({f"extra.{c}": torch.zeros(1) for c in "abc"})

    _edit_weights(ckpt, edit)
    with pytest.raises(CheckpointError, match=r"SAIL does not have: extra\.a, extra\.b, extra\.c, "
                                              r"model\.layers\.0\.mlp\.up_proj\.bias, "
                                              r"model\.layers\.1\.mlp\.up_proj\.bias and 2 more \("):
        SailCheckpoint(ckpt)


def test_known_unused_tensors_are_accepted(ckpt):
    """lm_head, the full embedding table and old-style rotary buffers load; lm_head may be absent too."""
    def inv_freq():
        return 1.0 / 10000 ** (torch.arange(0, 128, 2) / 128)

    _edit_weights(ckpt, lambda w: w.update({f"model.layers.{i}.self_attn.rotary_emb.inv_freq": inv_freq()
                                             for i in range(4)}))
    assert "lm_head.weight" in SailCheckpoint(ckpt).weight_map
    assert len(SailEncoder.from_pretrained(ckpt).layers) == 4
    _edit_weights(ckpt, lambda w: w.pop("lm_head.weight"))  # tied embeddings: no lm_head in the file
    assert len(SailEncoder.from_pretrained(ckpt, max_layer=2).layers) == 2


def test_more_layers_in_the_weights_than_the_config(tmp_path):
    out = make_checkpoint(tmp_path / "six", "tiny", num_hidden_layers=6)
    _edit_config(out, num_hidden_layers=4)
    with pytest.raises(CheckpointError) as info:
        SailEncoder.from_pretrained(out, max_layer=1)
    message = str(info.value)
    assert message.startswith(f"{out}: config.json says 4 layers (num_hidden_layers) but the weights hold "
                              f"model.layers.0..5 (6 layers; tensors past the config: model.layers.4.")
    assert "and 13 more" in message and "\n" not in message  # 2 blocks x 9 tensors, 5 shown


def test_rotary_buffer_past_the_config_is_refused(ckpt):
    _edit_weights(ckpt, lambda w: w.update({"model.layers.4.self_attn.rotary_emb.inv_freq": torch.ones(64)}))
    with pytest.raises(CheckpointError, match=r"config.json says 4 layers.*model\.layers\.0\.\.3 \(4 layers; "
                                              r"tensors past the config: model\.layers\.4\.self_attn\.rotary_emb"):
        SailCheckpoint(ckpt)


def test_fewer_layers_in_the_weights_than_the_config(tmp_path):
    out = make_checkpoint(tmp_path / "three", "tiny", num_hidden_layers=3)
    _edit_config(out, num_hidden_layers=4)
    with pytest.raises(CheckpointError) as info:
        SailEncoder.from_pretrained(out, max_layer=1)  # refused even though block 1 is there
    assert str(info.value) == (
        f"{out}: config.json says 4 layers (num_hidden_layers) but the weights hold model.layers.0..2 (3 layers); "
        f"use the config.json that came with these weights, or the weights that match it")


def test_a_block_missing_entirely(ckpt):
    _edit_weights(ckpt, lambda w: [w.pop(n) for n in list(w) if n.startswith("model.layers.2.")])
    with pytest.raises(CheckpointError, match=r"says 4 layers .* hold model\.layers\.0\.\.1, 3 \(3 layers; "
                                              r"layer\(s\) 2 absent\)"):
        SailCheckpoint(ckpt)


def test_no_block_at_all(ckpt):
    _edit_weights(ckpt, lambda w: [w.pop(n) for n in list(w) if n.startswith("model.layers.")])
    with pytest.raises(CheckpointError, match=r"says 4 layers \(num_hidden_layers\) but the weights hold no layer"):
        SailCheckpoint(ckpt)


class _ReadRecorder:
    """Wraps SailCheckpoint._open to record which tensors' data is read (get_tensor or slicing)."""

    def __init__(self, monkeypatch):
        self.read: list[str] = []
        original = SailCheckpoint._open
        recorder = self

        class Slice:
            def __init__(self, name, inner):
                self.name, self.inner = name, inner

            def __getitem__(self, item):
                recorder.read.append(self.name)
                return self.inner[item]

            def __getattr__(self, attr):
                return getattr(self.inner, attr)

        class Handle:
            def __init__(self, inner):
                self.inner = inner

            def __enter__(self):
                self.handle = self.inner.__enter__()
                return self

            def __exit__(self, *exc):
                return self.inner.__exit__(*exc)

            def keys(self):
                return self.handle.keys()

            def get_slice(self, name):
                return Slice(name, self.handle.get_slice(name))

            def get_tensor(self, name):
                recorder.read.append(name)
                return self.handle.get_tensor(name)

        monkeypatch.setattr(SailCheckpoint, "_open", staticmethod(lambda file: Handle(original(file))))


def test_opening_reads_only_headers(ckpt, monkeypatch):
    recorder = _ReadRecorder(monkeypatch)
    checkpoint = SailCheckpoint(ckpt)
    assert recorder.read == [] and len(checkpoint.tensor_dtypes) == len(checkpoint.weight_map)
    SailEncoder.from_pretrained(ckpt, max_layer=1)
    assert recorder.read and not any(n.startswith(("model.layers.1.", "lm_head")) for n in recorder.read)


# ------------------------------------------------------------------ non-finite weights
def test_clean_checkpoint_is_finite(tiny_checkpoint):
    ckpt = SailCheckpoint(tiny_checkpoint)
    assert ckpt.find_nonfinite() is None
    assert ckpt.find_nonfinite(dtype="float16") is None
    ckpt.check_finite(max_layer=2)


def test_nan_in_a_block_is_found_by_name(ckpt):
    name = "model.layers.2.mlp.down_proj.weight"

    def edit(w):
        w[name][3, :5] = float("nan")
        w[name][0, 0] = float("-inf")

    _edit_weights(ckpt, edit)
    checkpoint = SailCheckpoint(ckpt)
    found = checkpoint.find_nonfinite()
    assert (found.name, found.file, found.num_nan, found.num_inf, found.numel) == (
        name, ckpt / "model.safetensors", 5, 1, 256 * 512)
    assert found.overflows is None
    assert checkpoint.find_nonfinite(max_layer=2) is None  # blocks 1..2 are layers.0 and layers.1
    assert checkpoint.find_nonfinite(max_layer=-2).name == name
    with pytest.raises(CheckpointError) as info:
        checkpoint.check_finite(dtype="float32")
    message = str(info.value)
    assert message.startswith(f"{ckpt / 'model.safetensors'}: tensor {name} holds 5 NaN and 1 inf of its ")
    assert "damaged" in message and "--dtype" in message and "\n" not in message


def test_first_non_finite_tensor_in_forward_order(ckpt, monkeypatch):
    def edit(w):
        w["model.norm.weight"][0] = float("nan")  # stored before the blocks in the file
        w["model.layers.3.self_attn.q_proj.weight"][0, 0] = float("inf")
        w["model.layers.1.self_attn.v_proj.weight"][0, 0] = float("nan")

    _edit_weights(ckpt, edit)
    checkpoint = SailCheckpoint(ckpt)
    recorder = _ReadRecorder(monkeypatch)
    assert checkpoint.find_nonfinite().name == "model.layers.1.self_attn.v_proj.weight"
    assert "model.layers.2.mlp.up_proj.weight" not in recorder.read  # stops at the first one
    assert checkpoint.find_nonfinite(max_layer=1).name == "model.norm.weight"


def test_only_the_vision_token_rows_of_the_embedding_are_scanned(ckpt):
    checkpoint = SailCheckpoint(ckpt)
    patch_row = checkpoint.token_ids.patch
    _edit_weights(ckpt, lambda w: w["model.embed_tokens.weight"][0].fill_(float("nan")))  # a text token
    assert checkpoint.find_nonfinite(max_layer=0) is None
    found = checkpoint.find_nonfinite(["model.embed_tokens.weight"])  # whole tensors when named
    assert found.name == "model.embed_tokens.weight" and found.num_nan == 256
    _edit_weights(ckpt, lambda w: w["model.embed_tokens.weight"][patch_row, 7].fill_(float("nan")))
    found = checkpoint.find_nonfinite(max_layer=0)
    assert (found.name, found.num_nan, found.numel) == ("model.embed_tokens.weight", 1, 6 * 256)


def test_overflow_in_the_run_dtype_is_told_apart(ckpt):
    name = "model.vis_embed.weight"
    _edit_weights(ckpt, lambda w: w[name][1, :3].fill_(1e6))
    checkpoint = SailCheckpoint(ckpt)
    assert checkpoint.find_nonfinite() is None
    assert checkpoint.find_nonfinite(dtype=torch.bfloat16) is None
    found = checkpoint.find_nonfinite(dtype="float16")
    assert (found.name, found.num_nan, found.num_inf, found.overflows) == (name, 0, 3, torch.float16)
    with pytest.raises(CheckpointError, match=f"tensor {name} is finite as stored, but 3 of its .* overflow "
                                              f"float16 .*--dtype float32"):
        checkpoint.check_finite(dtype="fp16")


def test_unused_tensors_scanned_only_when_named(ckpt):
    _edit_weights(ckpt, lambda w: w["lm_head.weight"][2, 2:4].fill_(float("nan")))
    checkpoint = SailCheckpoint(ckpt)
    assert checkpoint.find_nonfinite() is None
    assert checkpoint.find_nonfinite(["model.norm.weight", "lm_head.weight"]).name == "lm_head.weight"
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: model\.nope"):
        checkpoint.find_nonfinite(["model.nope"])
