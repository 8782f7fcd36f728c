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
