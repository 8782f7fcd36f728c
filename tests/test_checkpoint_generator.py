"""Random checkpoints in SAIL's format: seeded, shardable, loadable."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from sail_vision import SailEncoder, SailVisionError
from sail_vision.checkpoint import SailCheckpoint, expected_tensor_shapes
from sail_vision.checkpoint_generator import PRESETS, make_checkpoint, preset_config


def _all_tensors(path):
    out = {}
    for file in sorted(path.glob("*.safetensors")):
        out.update(load_file(file))
    return out


def test_format_matches_upstream_layout(tiny_checkpoint):
    cfg = json.loads((tiny_checkpoint / "config.json").read_text())
    assert cfg["model_type"] == "mistral" and cfg["architectures"] == ["SailForCausalLM"]
    assert cfg["vision_patch_size"] == 8
    tensors = _all_tensors(tiny_checkpoint)
    sail_cfg = preset_config("tiny")
    want = {**expected_tensor_shapes(sail_cfg), "lm_head.weight": (96, 256)}
    assert {k: tuple(v.shape) for k, v in tensors.items()} == want
    ids = SailCheckpoint(tiny_checkpoint).token_ids
    assert min(ids.begin, ids.patch, ids.end, ids.cls) >= 3


def test_seeded_and_independent_of_sharding(tmp_path):
    a = make_checkpoint(tmp_path / "a", "tiny", seed=7)
    b = make_checkpoint(tmp_path / "b", "tiny", seed=7, max_shard_bytes=1_000_000)
    c = make_checkpoint(tmp_path / "c", "tiny", seed=8)
    ta, tb, tc = _all_tensors(a), _all_tensors(b), _all_tensors(c)
    assert len(list(b.glob("*.safetensors"))) > 1 and (b / "model.safetensors.index.json").is_file()
    assert ta.keys() == tb.keys()
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    assert not torch.equal(ta["model.vis_embed.weight"], tc["model.vis_embed.weight"])
    x = torch.randn(1, 2, 3, 3, 8, 8)
    ea, eb = SailEncoder.from_pretrained(a), SailEncoder.from_pretrained(b)
    assert torch.equal(ea.encode_patches(x).layer(-1), eb.encode_patches(x).layer(-1))


def test_overrides_dtype_and_tokenizer(tmp_path):
    out = make_checkpoint(tmp_path / "x", "tiny", dtype="bfloat16", num_hidden_layers=2, rope_theta=5e5,
                          vocab_size=200)
    tensors = _all_tensors(out)
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    assert "model.layers.2.mlp.up_proj.weight" not in tensors
    enc = SailEncoder.from_pretrained(out)
    assert enc.config.rope_theta == 5e5 and enc.num_layers == 2
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(out))
    ids = tok("<vision> <vpatch> </vision> <|vis_cls|>", add_special_tokens=False).input_ids
    t = enc.token_ids
    assert ids == [t.begin, t.patch, t.end, t.cls]


def test_activations_stay_in_a_sane_range(tiny_encoder):
    out = tiny_encoder.encode_patches(torch.randn(1, 4, 4, 3, 8, 8), [1, 3, 4])
    for k in (1, 3, 4):
        std = out.layer(k).std().item()
        assert 0.1 < std < 100, (k, std)


def test_refuses_to_clobber(tmp_path):
    make_checkpoint(tmp_path / "x", "tiny")
    with pytest.raises(SailVisionError, match="already exists"):
        make_checkpoint(tmp_path / "x", "tiny")
    make_checkpoint(tmp_path / "x", "tiny", overwrite=True, seed=3)
    assert not (tmp_path / "x.partial").exists()


def test_bad_preset_and_field():
    with pytest.raises(SailVisionError, match="unknown preset"):
        preset_config("huge")
    with pytest.raises(SailVisionError, match="head_dim"):
        preset_config("tiny", hidden_size=384)


def test_sail7b_preset_has_the_real_shape():
    cfg = preset_config("sail-7b")
    shapes = expected_tensor_shapes(cfg)
    params = sum(torch.Size(s).numel() for s in shapes.values()) + cfg.vocab_size * cfg.hidden_size
    assert cfg.head_dim == 128 and cfg.num_hidden_layers == 32 and cfg.vision_patch_size == 32
    assert 7.2e9 < params < 7.3e9
    assert set(PRESETS) == {"tiny", "small", "sail-7b"}


def test_cached_checkpoint_reuses_and_repairs(tmp_path):
    from sail_vision.checkpoint_generator import cached_checkpoint

    path, made = cached_checkpoint(tmp_path / "cache" / "tiny", "tiny", seed=2)
    assert made and SailEncoder.from_pretrained(path).num_layers == 4
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert cached_checkpoint(path, "tiny", seed=2) == (path, False)
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rewritten
    (path / "model.safetensors").write_bytes(b"broken")
    assert cached_checkpoint(path, "tiny", seed=2) == (path, True)
    assert SailEncoder.from_pretrained(path).num_layers == 4
