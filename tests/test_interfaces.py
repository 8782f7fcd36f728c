"""timm's forward_intermediates / prune_intermediate_layers / feature_info and DINOv2's
get_intermediate_layers on SailEncoder equal encode()'s hidden states (reference fixture, float32)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sail_vision import SailEncoder
from sail_vision.errors import InputError, LayerIndexError

TOL = 1e-5
L = 4  # blocks of the reference fixture


@pytest.fixture(scope="module")
def encoder(reference_dir):
    return SailEncoder.from_pretrained(reference_dir / "model")


def _pixels(reference_dir, reference_manifest, names=("img1_100x75",)):
    """A normalised (B, 3, H, W) batch from the fixture's upstream-preprocessed patches."""
    batch = []
    for name in names:
        patches = torch.from_numpy(np.load(reference_dir / reference_manifest["images"][name]["patches_file"]))
        nh, nw, c, p, _ = patches.shape
        batch.append(patches.permute(2, 0, 3, 1, 4).reshape(c, nh * p, nw * p))
    return torch.stack(batch)


@pytest.fixture(scope="module")
def pixels(reference_dir, reference_manifest):
    return _pixels(reference_dir, reference_manifest, ("img1_100x75", "img1_100x75"))


@pytest.fixture(scope="module")
def states(encoder, pixels):
    """encode()'s hidden states 0..L, raw and normed."""
    raw = encoder.encode_pixels(pixels, list(range(L + 1)))
    normed = encoder.encode_pixels(pixels, list(range(L + 1)), norm=True)
    return raw, normed


def _close(a, b):
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= TOL


def test_pixels_round_trip_the_reference_patches_and_match_upstream(encoder, reference_dir, reference_manifest,
                                                                    pixels):
    want = np.load(reference_dir / reference_manifest["cases"]["img1_100x75"]["files"]["hidden_states"]["file"])
    final, maps = encoder.forward_intermediates(pixels, indices=[-1], output_fmt="NLC")
    n = 10 * 13
    assert np.abs(maps[0][0].numpy() - want[L, 1:1 + n]).max() <= 1e-4


@pytest.mark.parametrize("indices, layers", [
    (None, [1, 2, 3, 4]), (2, [3, 4]), (1, [4]), ([0, 2], [1, 3]), ([-1, -4], [1, 4]), ([3, 1, -3], [2, 4]),
    (np.array([0, 2]), [1, 3]), (torch.tensor([-1, 1]), [2, 4]), (np.int64(2), [3, 4]), ((1, 1), [2]),
])
@pytest.mark.parametrize("norm", [False, True])
def test_forward_intermediates_equals_encode(encoder, pixels, states, indices, layers, norm):
    raw, normed = states
    ref = normed if norm else raw
    got = encoder.forward_intermediates(pixels, indices=indices, norm=norm, intermediates_only=True)
    assert len(got) == len(layers)
    for out, k in zip(got, layers):
        _close(out, ref.patch_maps(k))
    nlc = encoder.forward_intermediates(pixels, indices=indices, norm=norm, output_fmt="NLC",
                                        intermediates_only=True)
    for out, k in zip(nlc, layers):
        _close(out, ref.patch_tokens(k))


def test_final_output_and_stop_early(encoder, pixels, states):
    raw, normed = states
    final, inter = encoder.forward_intermediates(pixels, indices=[1])
    _close(final, normed.layer(L))  # every block run: the final norm of the last block, all tokens
    _close(inter[0], raw.patch_maps(2))
    final, _ = encoder.forward_intermediates(pixels, indices=[1], stop_early=True)
    _close(final, normed.layer(2))


def test_stop_early_runs_no_later_block(encoder, pixels):
    calls = []
    hooks = [layer.register_forward_hook(lambda m, i, o, k=k: calls.append(k)) for k, layer in enumerate(encoder.layers)]
    try:
        encoder.forward_intermediates(pixels, indices=[1], stop_early=True)
        assert calls == [0, 1]
        calls.clear()
        encoder.forward_intermediates(pixels, indices=[1], intermediates_only=True)
        assert calls == [0, 1]
        calls.clear()
        encoder.get_intermediate_layers(pixels, n=[0])
        assert calls == [0]
    finally:
        for h in hooks:
            h.remove()


def test_feature_info_and_prune(reference_dir, pixels, states):
    enc = SailEncoder.from_pretrained(reference_dir / "model")
    assert enc.feature_info == [{"num_chs": 256, "reduction": 8, "module": f"layers.{i}"} for i in range(L)]
    assert enc.prune_intermediate_layers([-3, 0], prune_norm=True) == [0, 1]
    assert len(enc.layers) == 2 and len(enc.feature_info) == 2
    got = enc.forward_intermediates(pixels, indices=[0, 1], norm=True, intermediates_only=True)
    _close(got[1], states[1].patch_maps(2))
    with pytest.raises(LayerIndexError, match="max_layer=2"):
        enc.forward_intermediates(pixels, indices=[2])


@pytest.mark.parametrize("n, layers", [(1, [4]), (3, [2, 3, 4]), ([0, 3], [1, 4]), ([-2], [3])])
@pytest.mark.parametrize("norm", [True, False])
def test_get_intermediate_layers_equals_encode(encoder, pixels, states, n, layers, norm):
    raw, normed = states
    ref = normed if norm else raw
    got = encoder.get_intermediate_layers(pixels, n=n, norm=norm)
    assert isinstance(got, tuple) and len(got) == len(layers)
    for out, k in zip(got, layers):
        _close(out, ref.patch_tokens(k))
    maps = encoder.get_intermediate_layers(pixels, n=n, norm=norm, reshape=True)
    for out, k in zip(maps, layers):
        _close(out, ref.patch_maps(k))


def test_get_intermediate_layers_class_token_is_vis_cls(encoder, pixels, reference_dir, reference_manifest):
    ref = encoder.encode_pixels(pixels, [2, 4], add_cls=True, norm=True)
    got = encoder.get_intermediate_layers(pixels, n=2, return_class_token=True)
    assert len(got) == 2
    (p3, c3), (p4, c4) = got
    _close(p4, ref.patch_tokens(4))
    _close(c4, ref.cls_token(4))
    _close(c3, encoder.encode_pixels(pixels, [3], add_cls=True, norm=True).cls_token(3))
    # and upstream's <|vis_cls|> state of the last layer
    case = reference_manifest["cases"]["img1_100x75_cls"]
    want = np.load(reference_dir / case["files"]["hidden_states"]["file"])
    assert np.abs(c4[0].numpy() - want[L, -1]).max() <= 1e-4


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(1, 3, 20, 24), "not a multiple of the patch size 8"),
    (torch.zeros(3, 16, 16), r"\(B, 3, H, W\)"),
    (torch.zeros(1, 1, 16, 16), r"\(B, 3, H, W\)"),
])
def test_bad_inputs_are_clear_errors(encoder, bad, message):
    with pytest.raises(InputError, match=message):
        encoder.forward_intermediates(bad)
    with pytest.raises(InputError, match=message):
        encoder.get_intermediate_layers(bad)


@pytest.mark.parametrize("indices, message", [(0, "last-n 0"), (5, "last-n 5"), ([4], "block index 4"),
                                              ([-5], "block index -5"), (["a"], "not an integer"),
                                              ([1.0], "not an integer"), ([True], "not an integer"),
                                              ("12", "not an integer"), (1.5, "give an int")])
def test_bad_indices(encoder, pixels, indices, message):
    with pytest.raises(LayerIndexError, match=message):
        encoder.forward_intermediates(pixels, indices=indices)


def test_output_fmt_is_checked(encoder, pixels):
    with pytest.raises(InputError, match="output_fmt 'NHWC'"):
        encoder.forward_intermediates(pixels, output_fmt="NHWC")
