"""The encoder's API on a random checkpoint: batching, layer selection, norm, pooling, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sail_vision import LayerIndexError, SailEncoder
from sail_vision.checkpoint import SailCheckpoint


def _patches(*grid, seed=0, batch=None, p=8):
    gen = torch.Generator().manual_seed(seed)
    shape = (*grid, 3, p, p) if batch is None else (batch, *grid, 3, p, p)
    return torch.randn(shape, generator=gen)


def test_same_grid_batch_equals_one_at_a_time(tiny_encoder):
    batch = _patches(3, 5, batch=4)
    together = tiny_encoder.encode_patches(batch, [0, 2, -1])
    for i in range(4):
        alone = tiny_encoder.encode_patches(batch[i], [0, 2, -1])
        for k in (0, 2, 4):
            assert (together.hidden_states[k][i] - alone.hidden_states[k][0]).abs().max() <= 1e-5


def test_mixed_grids_group_and_pad(tiny_encoder):
    items = [_patches(2, 3, seed=1), _patches(4, 4, seed=2), _patches(2, 3, seed=3)]
    out = tiny_encoder.encode_patches(items, [1, -1], add_cls=True)
    assert out.grids == [(2, 3), (4, 4), (2, 3)]
    assert out.seq_lens == [9, 19, 9]
    assert out.hidden_states[4].shape == (3, 19, 256)
    assert out.padding_mask.sum(1).tolist() == [9, 19, 9]
    with pytest.raises(ValueError, match="mixes grids"):
        out.patch_tokens(-1)
    for i, (item, single) in enumerate(zip(items, out.per_image())):
        alone = tiny_encoder.encode_patches(item, [1, -1], add_cls=True)
        for k in (1, 4):
            assert single.hidden_states[k].shape == alone.hidden_states[k].shape
            assert (single.hidden_states[k] - alone.hidden_states[k]).abs().max() <= 1e-5
        for pool in ("mean", "end", "cls"):
            assert (out.pooled(-1, pool)[i] - alone.pooled(-1, pool)[0]).abs().max() <= 1e-5
    # padding is zero, never content
    assert out.hidden_states[4][0, 9:].abs().sum() == 0


def test_token_layout_helpers(tiny_encoder):
    out = tiny_encoder.encode_patches(_patches(3, 4, batch=2), [2], add_cls=True)
    states = out.layer(2)
    assert out.grid == (3, 4)
    assert torch.equal(out.patch_tokens(2), states[:, 1:13])
    maps = out.patch_maps(2)
    assert maps.shape == (2, 256, 3, 4)
    assert torch.equal(maps[:, :, 1, 2], states[:, 1 + 1 * 4 + 2])
    assert torch.allclose(out.mean_patch(2), states[:, 1:13].mean(1), atol=1e-6)
    assert torch.equal(out.end_token(2), states[:, 13])
    assert torch.equal(out.cls_token(2), states[:, 14])
    no_cls = tiny_encoder.encode_patches(_patches(3, 4), [2])
    with pytest.raises(ValueError, match="add_cls"):
        no_cls.cls_token(2)


def test_only_requested_layers_kept_and_blocks_run(tiny_encoder):
    calls = []
    hooks = [layer.register_forward_hook(lambda m, a, o, i=i: calls.append(i))
             for i, layer in enumerate(tiny_encoder.layers)]
    try:
        out = tiny_encoder.encode_patches(_patches(2, 2), [2, -4, 0])
    finally:
        for hook in hooks:
            hook.remove()
    assert out.layers == [2, 1, 0]
    assert calls == [0, 1]
    with pytest.raises(LayerIndexError, match="not requested"):
        out.layer(3)


def test_norm_flag_semantics(tiny_encoder):
    x = _patches(2, 3)
    raw = tiny_encoder.encode_patches(x, [0, 2, 4])
    normed = tiny_encoder.encode_patches(x, [0, 2, 4], norm=True)
    for k in (0, 2):
        assert torch.allclose(normed.hidden_states[k], tiny_encoder.norm(raw.hidden_states[k]), atol=1e-6)
        assert not torch.allclose(normed.hidden_states[k], raw.hidden_states[k])
    # index L already is the final norm; norm=True does not apply it twice
    assert torch.equal(normed.hidden_states[4], raw.hidden_states[4])


def test_no_autograd_graph_by_default(tiny_encoder):
    out = tiny_encoder.encode_patches(_patches(2, 2), [-1])
    assert out.layer(-1).grad_fn is None and not out.layer(-1).requires_grad
    x = _patches(2, 2).requires_grad_()
    tiny_encoder.vis_embed.weight.requires_grad_(True)
    try:
        graph = tiny_encoder.encode_patches(x, [1], enable_grad=True)
        assert graph.layer(1).grad_fn is not None
    finally:
        tiny_encoder.vis_embed.weight.requires_grad_(False)


@pytest.mark.parametrize("bad, match", [(5, "out of range"), (-6, "out of range"), ([], "no layer"),
                                        ([1.5], "not an integer"), (True, "must be an int")])
def test_layer_index_errors(tiny_encoder, bad, match):
    with pytest.raises(LayerIndexError, match=match):
        tiny_encoder.encode_patches(_patches(2, 2), bad)


def test_max_layer_reads_only_needed_tensors(tiny_checkpoint, monkeypatch):
    requested = []
    original = SailCheckpoint.read_tensors

    def spy(self, shapes, **kwargs):
        requested.extend(shapes)
        return original(self, shapes, **kwargs)

    monkeypatch.setattr(SailCheckpoint, "read_tensors", spy)
    encoder = SailEncoder.from_pretrained(tiny_checkpoint, max_layer=2)
    assert len(encoder.layers) == 2
    assert not any(name.startswith("lm_head") for name in requested)
    assert not any(name.startswith(("model.layers.2.", "model.layers.3.")) for name in requested)
    assert any(name.startswith("model.layers.1.") for name in requested)
    assert encoder.vision_token_embeds.shape == (6, 256)  # 6 rows, not the whole table
    with pytest.raises(LayerIndexError, match="max_layer=2"):
        encoder.encode_patches(_patches(2, 2), [3])
    with pytest.raises(LayerIndexError, match="max_layer=2"):
        encoder.encode_patches(_patches(2, 2), [-1])
    with pytest.raises(LayerIndexError, match="out of range"):
        SailEncoder.from_pretrained(tiny_checkpoint, max_layer=9)


def test_embedding_rows_come_from_the_tokenizer_ids(tiny_checkpoint, tiny_encoder):
    from safetensors import safe_open

    with safe_open(tiny_checkpoint / "model.safetensors", framework="pt") as handle:
        table = handle.get_tensor("model.embed_tokens.weight")
    ids = tiny_encoder.token_ids
    assert ids.begin > 10  # the generator puts vision tokens away from the start
    want = table[[ids.begin, ids.patch, ids.row_sep, ids.frame_sep, ids.end, ids.cls]]
    assert torch.equal(tiny_encoder.vision_token_embeds, want)


def test_encode_accepts_paths_pil_and_arrays(tiny_encoder, tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, size=(30, 41, 3), dtype=np.uint8)
    path = tmp_path / "img.png"
    Image.fromarray(array).save(path)
    outs = [tiny_encoder.encode(x, [1]) for x in (path, str(path), Image.fromarray(array), array)]
    for out in outs[1:]:
        assert out.grids == outs[0].grids == [(5, 6)]  # 41x30 -> 48x40
        assert torch.equal(out.layer(1), outs[0].layer(1))
    fixed = tiny_encoder.encode([array, array[:20]], [1], resolution=32)
    assert fixed.grids == [(4, 4), (4, 4)]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_dtypes(tiny_checkpoint, tiny_encoder, dtype):
    encoder = SailEncoder.from_pretrained(tiny_checkpoint, dtype=dtype)
    assert str(encoder.dtype) == f"torch.{dtype}"
    x = _patches(3, 3)
    got = encoder.encode_patches(x, [-1]).layer(-1).float()
    want = tiny_encoder.encode_patches(x, [-1]).layer(-1)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert (got - want).abs().max() / want.abs().max() < 0.03
    # rotary tables stay float32 even when the module is cast
    assert encoder.rotary.inv_freq().dtype == torch.float32


@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16])
def test_caller_autocast_does_not_change_the_encoder_dtype(tiny_encoder, autocast_dtype):
    """A caller's autocast (mmengine AMP) must not run the frozen encoder in another precision."""
    x = _patches(2, 3, batch=2)
    want = tiny_encoder.encode_patches(x, [0, 1, -1])
    with torch.autocast("cpu", dtype=autocast_dtype):
        got = tiny_encoder.encode_patches(x, [0, 1, -1])
        embedded = tiny_encoder.embed(x)
    assert embedded.dtype == torch.float32
    for k in (0, 1, 4):
        assert got.hidden_states[k].dtype == torch.float32
        torch.testing.assert_close(got.hidden_states[k], want.hidden_states[k], atol=0, rtol=0)


def test_bad_patch_shapes(tiny_encoder):
    with pytest.raises(ValueError, match="patch size 8"):
        tiny_encoder.encode_patches(torch.zeros(2, 2, 3, 16, 16))
    with pytest.raises(ValueError, match="no images"):
        tiny_encoder.encode_patches([])
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny_encoder.encode_pixels(torch.zeros(3, 16, 16))
    with pytest.raises(ValueError, match="multiple of the patch size"):
        tiny_encoder.encode_pixels(torch.zeros(1, 3, 20, 16))


def test_encode_pixels_matches_encode_patches(tiny_encoder):
    pixels = torch.randn(2, 3, 24, 32, generator=torch.Generator().manual_seed(4))
    a = tiny_encoder.encode_pixels(pixels, [2])
    patches = pixels.reshape(2, 3, 3, 8, 4, 8).permute(0, 2, 4, 1, 3, 5)
    b = tiny_encoder.encode_patches(patches, [2])
    assert a.grid == (3, 4)
    assert torch.equal(a.layer(2), b.layer(2))


def test_device_resolution():
    from sail_vision import InputError
    from sail_vision.devices import resolve_device

    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(InputError, match="--device"):
        resolve_device("nonsense")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda")


def test_rotary_tables_are_cached_per_grid_and_bounded(tiny_checkpoint, monkeypatch):
    import sail_vision.encoder as encoder_module
    from sail_vision import SailEncoder

    encoder = SailEncoder.from_pretrained(tiny_checkpoint)
    torch.manual_seed(0)
    a, b = torch.randn(1, 2, 3, 3, 8, 8), torch.randn(1, 3, 2, 3, 8, 8)
    first = encoder.encode_patches(a, [2]).hidden_states[2]
    monkeypatch.setattr(encoder_module, "ROTARY_CACHE_GRIDS", 1)
    encoder.encode_patches(b, [2])
    assert list(encoder._rotary_tables) == [(3, 2, False, torch.float32, torch.device("cpu"))]
    assert torch.equal(encoder.encode_patches(a, [2]).hidden_states[2], first)  # rebuilt, same values
    encoder.to(torch.float64)
    assert not encoder._rotary_tables  # a conversion drops tables of the old dtype
