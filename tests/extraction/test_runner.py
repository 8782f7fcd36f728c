"""extract(): features equal the encoder's, every layout, bad inputs, resume / overwrite rules."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sail_vision.extraction import ExtractionError, extract
from sail_vision.extraction.encoding import batch_features
from sail_vision.extraction.writer import ArraySpec
from sail_vision.feature_store import FeatureStoreError, open_feature_dir, read_manifest
from sail_vision.outputs import SailEncoding

from image_factory import save_rgb, write_bad_inputs, write_convertible_inputs

FAST = dict(workers=0, progress=False, batch_size=4)


@pytest.mark.parametrize("resolution", [None, 16])
def test_features_equal_the_encoder_outputs(tiny_checkpoint, tiny_encoder, mixed_folder, tmp_path, resolution):
    result = extract(tiny_checkpoint, mixed_folder, tmp_path / "out", layers=[1, -1],
                     pools=["patch", "mean", "cls", "end"], resolution=resolution, save_dtype="float32", **FAST)
    assert (result.num_items, result.num_valid, result.num_failed) == (6, 6, 0)
    features = open_feature_dir(tmp_path / "out")
    assert features.names == [f"layer-{k}_{p}" for k in (1, 4) for p in ("patch", "mean", "cls", "end")]
    assert features.labels is None and len(features.paths) == 6
    layout = "rows" if resolution is None else "grid"
    assert features.info("layer-4_patch")["layout"] == layout
    for i, path in enumerate(features.paths):
        expected = tiny_encoder.encode(path, [1, -1], add_cls=True, resolution=resolution)
        for k in (1, 4):
            patches = features.patch_maps(f"layer-{k}_patch", i)
            np.testing.assert_allclose(patches.reshape(-1, 256), expected.patch_tokens(k)[0].numpy(), atol=1e-4)
            for pool, getter in (("mean", expected.mean_patch), ("cls", expected.cls_token),
                                 ("end", expected.end_token)):
                np.testing.assert_allclose(features.feature(f"layer-{k}_{pool}")[i], getter(k)[0].numpy(), atol=1e-4)


def test_float16_is_the_default_save_dtype_and_arrays_are_memory_mapped(tiny_checkpoint, mixed_folder, tmp_path):
    extract(tiny_checkpoint, mixed_folder, tmp_path / "out", pools=["mean", "patch"], resolution=16, **FAST)
    features = open_feature_dir(tmp_path / "out")
    mean = features.feature("layer-4_mean")
    assert isinstance(mean, np.memmap) and mean.dtype == np.float16 and mean.shape == (6, 256)
    assert features.feature("layer-4_patch").shape == (6, 2, 2, 256)
    manifest = features.manifest
    assert manifest["dtypes"] == {"compute": "float32", "save": "float16"}
    assert manifest["checkpoint"]["config_fingerprint"] == manifest["settings"]["config_fingerprint"]
    assert manifest["software"]["torch"] == torch.__version__
    assert not (tmp_path / "out" / ".extract").exists()


def test_imagenet_extraction_stores_labels_and_classes(tiny_checkpoint, tmp_path):
    for c, name in enumerate(["n02000000", "n01000000"]):
        for i in range(2):
            save_rgb(tmp_path / "train" / name / f"{name}_{i}.JPEG", 24, 16, seed=10 * c + i)
    extract(tiny_checkpoint, tmp_path / "train", tmp_path / "out", **FAST)
    features = open_feature_dir(tmp_path / "out")
    assert features.classes == ["n01000000", "n02000000"]
    assert features.labels.tolist() == [0, 0, 1, 1]
    assert all("n01000000" in p for p in features.paths[:2])


def test_list_file_with_named_labels(tiny_checkpoint, tmp_path):
    for i in range(3):
        save_rgb(tmp_path / f"{i}.png", 16, 16, seed=i)
    (tmp_path / "list.csv").write_text("path,label\n0.png,dog\n1.png,cat\n2.png,dog\n")
    extract(tiny_checkpoint, tmp_path / "list.csv", tmp_path / "out", **FAST)
    features = open_feature_dir(tmp_path / "out")
    assert features.classes == ["cat", "dog"] and features.labels.tolist() == [1, 0, 1]


def test_ade20k_split(tiny_checkpoint, tmp_path):
    base = tmp_path / "ADEChallengeData2016" / "images"
    save_rgb(base / "validation" / "ADE_val_1.jpg", 24, 16)
    save_rgb(base / "training" / "ADE_train_1.jpg", 24, 16)
    extract(tiny_checkpoint, tmp_path, tmp_path / "out", split="validation", **FAST)
    features = open_feature_dir(tmp_path / "out")
    assert features.paths == [str(base / "validation" / "ADE_val_1.jpg")]
    assert features.manifest["inputs"]["layout"] == "ade20k"


@pytest.mark.parametrize("resolution", [None, 16])
def test_bad_inputs_are_skipped_recorded_and_never_presented(tiny_checkpoint, tiny_encoder, tmp_path, resolution):
    good = [tmp_path / "good0.png", tmp_path / "good1.png"]
    for i, path in enumerate(good):
        save_rgb(path, 24, 16, seed=i)
    bad = write_bad_inputs(tmp_path / "bad")
    converted = write_convertible_inputs(tmp_path / "convert")
    listed = [good[0], *bad.values(), *(p for p, _ in converted.values()), good[1], good[0]]
    (tmp_path / "list.txt").write_text("".join(f"{p}\n" for p in listed))
    result = extract(tiny_checkpoint, tmp_path / "list.txt", tmp_path / "out", pools=["mean", "patch"],
                     resolution=resolution, save_dtype="float32", **FAST)
    expected_kinds = {**{str(p): kind for kind, p in bad.items()}, "duplicate": "duplicate"}
    records = [json.loads(line) for line in (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert sorted(r["kind"] for r in records) == sorted(expected_kinds.values())
    failed_rows = sorted(r["index"] for r in records)
    assert failed_rows == [1, 2, 3, 4, 5, 6, len(listed) - 1]
    for r in records:
        assert r["path"] == str(listed[r["index"]]) and r["reason"]
    assert result.num_failed == 7 and result.num_valid == len(listed) - 7
    features = open_feature_dir(tmp_path / "out")
    manifest = features.manifest
    assert manifest["failures"]["count"] == 7 and manifest["failures"]["by_kind"]["duplicate"] == 1
    assert [r["index"] for r in manifest["failures"]["items"]] == failed_rows
    valid = np.load(tmp_path / "out" / "valid.npy")
    assert np.flatnonzero(~valid).tolist() == failed_rows
    raw = features.feature("layer-4_mean", valid_only=False)
    assert not raw[failed_rows].any() and np.abs(raw[valid]).sum(1).min() > 0
    assert features.feature("layer-4_mean").shape[0] == len(features.paths) == result.num_valid
    assert str(listed[1]) not in features.paths
    # The convertible modes became the right RGB pixels (16-bit scaled, alpha over white, ...).
    for kind, (path, pixels) in converted.items():
        row = features.paths.index(str(path))
        expected = tiny_encoder.encode(pixels, [-1], resolution=resolution).mean_patch(-1)[0].numpy()
        np.testing.assert_allclose(features.feature("layer-4_mean")[row], expected, atol=1e-4, err_msg=kind)


def test_strict_stops_and_resume_after_fixing_gives_identical_files(tiny_checkpoint, tmp_path):
    folder = tmp_path / "images"
    for i in range(8):
        save_rgb(folder / f"{i}.png", 16, 16, seed=i)
    (folder / "5.png").write_bytes((folder / "5.png").read_bytes()[:60])  # truncated
    with pytest.raises(ExtractionError, match=r"5\.png.*--strict"):
        extract(tiny_checkpoint, folder, tmp_path / "out", strict=True, resolution=16, **{**FAST, "batch_size": 2})
    assert read_manifest(tmp_path / "out")["complete"] is False
    with pytest.raises(FeatureStoreError, match="unfinished.*--resume"):
        open_feature_dir(tmp_path / "out")
    save_rgb(folder / "5.png", 16, 16, seed=5)
    result = extract(tiny_checkpoint, folder, tmp_path / "out", strict=True, resolution=16, resume=True,
                     **{**FAST, "batch_size": 2})
    assert result.num_failed == 0 and 0 < result.images_processed < 8  # only unfinished batches were redone
    extract(tiny_checkpoint, folder, tmp_path / "fresh", resolution=16, **{**FAST, "batch_size": 2})
    for name in ("layer-4_mean.npy", "valid.npy", "paths.txt", "failures.jsonl", "patch_grids.npy"):
        assert (tmp_path / "out" / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes(), name


def test_existing_output_rules(tiny_checkpoint, mixed_folder, tmp_path):
    out = tmp_path / "out"
    extract(tiny_checkpoint, mixed_folder, out, **FAST)
    with pytest.raises(ExtractionError, match="already holds a finished extraction; pass --resume"):
        extract(tiny_checkpoint, mixed_folder, out, **FAST)
    again = extract(tiny_checkpoint, mixed_folder, out, resume=True, **FAST)
    assert again.already_complete and "nothing to do" in again.summary()
    with pytest.raises(ExtractionError, match=r"different settings \(pools: was \['mean'\], now \['end'\]"):
        extract(tiny_checkpoint, mixed_folder, out, resume=True, pools=["end"], **FAST)
    extract(tiny_checkpoint, mixed_folder, out, overwrite=True, pools=["end"], **FAST)
    assert open_feature_dir(out).names == ["layer-4_end"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(ExtractionError, match="not a sail-vision feature folder"):
        extract(tiny_checkpoint, mixed_folder, foreign, overwrite=True, **FAST)
    assert (foreign / "keep.txt").read_text() == "mine"


def test_resume_refuses_changed_inputs(tiny_checkpoint, mixed_folder, tmp_path):
    (mixed_folder / "img1.png").write_bytes(b"")  # a --strict run stops there, leaving it unfinished
    with pytest.raises(ExtractionError, match="zero-byte"):
        extract(tiny_checkpoint, mixed_folder, tmp_path / "out", strict=True, resolution=16, **FAST)
    save_rgb(mixed_folder / "extra.png", 16, 16)
    with pytest.raises(ExtractionError, match="input images changed"):
        extract(tiny_checkpoint, mixed_folder, tmp_path / "out", resume=True, strict=True, resolution=16, **FAST)


def _encoding_with(value: float) -> SailEncoding:
    states = {4: torch.full((1, 2 + 4, 8), value)}
    return SailEncoding(hidden_states=states, grids=[(2, 2)], add_cls=False, num_layers=4)


def _no_hint() -> str:
    raise AssertionError("the weights are scanned only when the model produced NaN/inf")


def test_values_that_float16_cannot_hold_are_an_error_not_a_clip():
    spec = [ArraySpec("layer-4_mean", "layer-4_mean.npy", (1, 8), "float16", "pooled", 4, "mean")]
    with pytest.raises(ExtractionError, match="--save-dtype float32"):
        batch_features(_encoding_with(70000.0), spec, torch.float16, np.array([0]), ["/a.jpg"], _no_hint)
    assert batch_features(_encoding_with(70000.0), spec, torch.float32, np.array([0]), ["/a.jpg"], _no_hint)[
        "layer-4_mean"].max() == 70000.0
    with pytest.raises(ExtractionError, match="/a.jpg .*: the hint"):
        batch_features(_encoding_with(float("nan")), spec, torch.float32, np.array([0]), ["/a.jpg"],
                        lambda: "the hint")


def _write_tensor_values(checkpoint, name, index, value):
    from safetensors.torch import load_file, save_file

    weights = load_file(checkpoint / "model.safetensors")
    weights[name][index] = value
    save_file(weights, checkpoint / "model.safetensors", metadata={"format": "pt"})


def test_nan_features_name_the_damaged_weight(tiny_checkpoint, mixed_folder, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    _write_tensor_values(ckpt, "model.layers.1.mlp.down_proj.weight", (0, slice(0, 3)), float("nan"))
    with pytest.raises(ExtractionError) as info:
        extract(ckpt, mixed_folder, tmp_path / "out", layers=[4], dtype="float32", **FAST)
    message = str(info.value)
    assert "tensor model.layers.1.mlp.down_proj.weight holds 3 NaN and 0 inf" in message
    assert "no --dtype will help" in message and "\n" not in message


def test_nan_from_finite_weights_in_float32_does_not_suggest_float32(tiny_checkpoint, mixed_folder, tmp_path):
    import shutil

    ckpt = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, ckpt)
    # finite, but each norm squares past float32's range, so the block's output is inf/NaN
    _write_tensor_values(ckpt, "model.layers.0.self_attn.o_proj.weight", (slice(None), slice(None)), 3e38)
    with pytest.raises(ExtractionError) as info:
        extract(ckpt, mixed_folder, tmp_path / "out", layers=[4], dtype="float32", **FAST)
    message = str(info.value)
    assert "from finite weights" in message and "--dtype float32" not in message


def test_bad_options_raise_before_any_work(tiny_checkpoint, mixed_folder, tmp_path):
    from sail_vision.errors import InputError, LayerIndexError

    with pytest.raises(InputError, match="pool"):
        extract(tiny_checkpoint, mixed_folder, tmp_path / "o", pools=["max"], **FAST)
    with pytest.raises(LayerIndexError):
        extract(tiny_checkpoint, mixed_folder, tmp_path / "o", layers=[9], **FAST)
    with pytest.raises(InputError, match="multiple of the patch size"):
        extract(tiny_checkpoint, mixed_folder, tmp_path / "o", resolution=30, **FAST)
    with pytest.raises(InputError, match="save-dtype"):
        extract(tiny_checkpoint, mixed_folder, tmp_path / "o", save_dtype="int8", **FAST)
    assert not (tmp_path / "o").exists()


def test_strict_stop_then_fixing_the_file_and_resuming_extracts_it(tiny_checkpoint, tmp_path):
    images = tmp_path / "images"
    for i in range(4):
        save_rgb(images / f"{i}.png", 16, 16, seed=i)
    good = (images / "2.png").read_bytes()
    (images / "2.png").write_bytes(good[: len(good) // 2])  # header intact, pixel data truncated
    with pytest.raises(ExtractionError, match="2.png.*fix the file and --resume"):
        extract(tiny_checkpoint, images, tmp_path / "out", strict=True, **{**FAST, "batch_size": 1})
    (images / "2.png").write_bytes(good)
    result = extract(tiny_checkpoint, images, tmp_path / "out", strict=True, resume=True, **{**FAST, "batch_size": 1})
    assert (result.num_valid, result.num_failed) == (4, 0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("save_dtype", [torch.float16, torch.float32])
def test_cuda_copy_back_equals_the_cpu_arrays(save_dtype):
    from sail_vision.extraction.encoding import finish_copy_back, start_copy_back

    spec = [ArraySpec("layer-4_mean", "layer-4_mean.npy", (1, 8), "float16", "pooled", 4, "mean")]
    states = {4: torch.randn(3, 6, 8)}
    encodings = [SailEncoding(hidden_states={4: s.to(device)}, grids=[(2, 2)] * 3, add_cls=False, num_layers=4)
                 for s in states.values() for device in ("cpu", "cuda")]
    cpu, cuda = (finish_copy_back(start_copy_back(e, spec, save_dtype, np.arange(3)), spec, ["a", "b", "c"],
                                   _no_hint) for e in encodings)
    np.testing.assert_array_equal(cpu["layer-4_mean"], cuda["layer-4_mean"])
    bad = SailEncoding(hidden_states={4: torch.full((1, 6, 8), float("nan"), device="cuda")}, grids=[(2, 2)],
                       add_cls=False, num_layers=4)
    with pytest.raises(ExtractionError, match="/x.jpg .*: the hint"):
        finish_copy_back(start_copy_back(bad, spec, save_dtype, np.array([0])), spec, ["/x.jpg"], lambda: "the hint")
