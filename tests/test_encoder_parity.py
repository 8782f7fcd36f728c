"""Parity with the upstream SAIL implementation on the shared reference fixture."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sail_vision import SailEncoder, image_to_patches, native_resize_size
from sail_vision.positions import image_position_ids, image_token_ids

F32_TOL = 1e-4
BF16_REL_TOL = 0.02


def _cases(manifest, precision=None, image_only=True):
    out = []
    for name, info in manifest["cases"].items():
        if image_only and info.get("text_suffix"):
            continue
        if precision and info["precision"] != precision:
            continue
        out.append(name)
    return out


def _load_case(reference_dir, manifest, name):
    info = manifest["cases"][name]
    files = {key: np.load(reference_dir / spec["file"]) for key, spec in info["files"].items()}
    patches = torch.from_numpy(np.load(reference_dir / info["patches_file"]))
    return info, files, patches


@pytest.fixture(scope="module")
def ref_encoder(reference_dir):
    return SailEncoder.from_pretrained(reference_dir / "model")


def test_resize_vectors(reference_manifest):
    cases = reference_manifest["resize_cases"]
    assert len(cases) >= 30
    for case in cases:
        got = native_resize_size(tuple(case["in_wh"]), case["patch_size"])
        assert list(got) == case["out_wh"], case
        assert [got[1] // case["patch_size"], got[0] // case["patch_size"]] == case["grid_hw"]


def test_patches_match_upstream_preprocessing(reference_dir, reference_manifest):
    patch = reference_manifest["config"]["vision_patch_size"]
    checked = 0
    for name, info in reference_manifest["images"].items():
        got = image_to_patches(reference_dir / info["file"], patch)
        assert list(got.shape) == info["patches_shape"]
        if "patches_file" in info:
            want = np.load(reference_dir / info["patches_file"])
            assert np.abs(got.numpy() - want).max() <= 1e-6, name
        else:
            index = np.load(reference_dir / info["patches_subsample_index_file"])
            want = np.load(reference_dir / info["patches_subsample_file"])
            rows = got.reshape(-1, 3 * patch * patch).numpy()[index]
            assert np.abs(rows - want).max() <= 1e-6, name
            stats = info["patches_stats_float64"]
            assert got.double().sum().item() == pytest.approx(stats["sum"], rel=1e-6)
        checked += 1
    assert checked == len(reference_manifest["images"]) >= 4


@pytest.mark.parametrize("with_prompt", [False, True])
def test_token_and_position_ids(reference_dir, reference_manifest, ref_encoder, with_prompt):
    names = [n for n, info in reference_manifest["cases"].items() if bool(info.get("text_suffix")) == with_prompt]
    assert names
    for name in names:
        info, files, _ = _load_case(reference_dir, reference_manifest, name)
        nh, nw = info["grid_hw"]
        image_len = info["image_tokens_len"]
        ids = image_token_ids(ref_encoder.token_ids, nh, nw, info["add_cls"])
        assert ids.tolist() == files["input_ids"][:image_len].tolist()
        trailing = info["seq_len"] - 1 - nh * nw
        pos = image_position_ids(nh, nw, trailing=trailing)
        assert pos.tolist() == files["position_ids"][:, 0, :].tolist()
        patch_slots = files["vision_patch_indices"]
        assert patch_slots[1:1 + nh * nw].tolist() == list(range(nh * nw))


def test_position_example_from_reference(reference_manifest):
    example = reference_manifest["position_id_example_2x3"]
    assert image_position_ids(2, 3, add_cls=True).tolist() == example["position_ids_thw"]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_float32_cases_every_layer(reference_dir, reference_manifest, attn):
    encoder = SailEncoder.from_pretrained(reference_dir / "model", attn_implementation=attn)
    num_layers = reference_manifest["config"]["num_hidden_layers"]
    names = _cases(reference_manifest, "f32")
    assert any(reference_manifest["cases"][n]["add_cls"] for n in names), "the cls case must be covered"
    for name in names:
        info, files, patches = _load_case(reference_dir, reference_manifest, name)
        out = encoder.encode_patches(patches, list(range(num_layers + 1)), add_cls=info["add_cls"])
        want = files["hidden_states"]
        for k in range(num_layers + 1):
            got = out.hidden_states[k][0].numpy()
            assert got.shape == want[k].shape
            err = np.abs(got - want[k]).max()
            assert err <= F32_TOL, f"{name} layer {k}: max-abs {err:.3g}"


def test_image_prefix_of_prompt_case(reference_dir, reference_manifest, ref_encoder):
    """With the prefix mask, image tokens never see the text after them: the image part of the
    prompt case equals the image-only encoding."""
    (name,) = [n for n, i in reference_manifest["cases"].items() if i.get("text_suffix")]
    info, files, patches = _load_case(reference_dir, reference_manifest, name)
    image_len = info["image_tokens_len"]
    out = ref_encoder.encode_patches(patches, [1, 2, -1])
    for k in (1, 2, 4):
        got = out.hidden_states[k][0].numpy()
        assert np.abs(got - files["hidden_states"][k][:image_len]).max() <= F32_TOL


def test_bf16_case(reference_dir, reference_manifest):
    encoder = SailEncoder.from_pretrained(reference_dir / "model", dtype="bfloat16")
    assert encoder.dtype == torch.bfloat16
    names = _cases(reference_manifest, "bf16")
    assert names
    for name in names:
        info, files, patches = _load_case(reference_dir, reference_manifest, name)
        want = files["hidden_states"]
        out = encoder.encode_patches(patches, list(range(len(want))), add_cls=info["add_cls"])
        for k in range(len(want)):
            got = out.hidden_states[k][0].float().numpy()
            rel = np.abs(got - want[k]).max() / np.abs(want[k]).max()
            assert rel <= BF16_REL_TOL, f"{name} layer {k}: {rel:.3%}"


def test_max_layer_matches_full_model(reference_dir, reference_manifest, ref_encoder):
    info, files, patches = _load_case(reference_dir, reference_manifest, _cases(reference_manifest, "f32")[0])
    full = ref_encoder.encode_patches(patches, [1, 2, 3])
    for k in (1, 2, 3):
        partial = SailEncoder.from_pretrained(reference_dir / "model", max_layer=k)
        assert len(partial.layers) == k
        got = partial.encode_patches(patches, [k]).hidden_states[k]
        assert torch.equal(got, full.hidden_states[k])
        assert np.abs(got[0].numpy() - files["hidden_states"][k]).max() <= F32_TOL


def test_last_layer_prenorm_is_block_output(reference_dir, reference_manifest, ref_encoder):
    """Index L is the final norm of block L's output, which upstream stores separately."""
    info, files, patches = _load_case(reference_dir, reference_manifest, _cases(reference_manifest, "f32")[0])
    out = ref_encoder.encode_patches(patches, [-1])
    prenorm = torch.from_numpy(files["last_layer_prenorm"])[None]
    assert np.abs(ref_encoder.norm(prenorm)[0].numpy() - out.layer(-1)[0].numpy()).max() <= F32_TOL
