"""Checkpoints load with torch.load(weights_only=True); crafted pickles are refused, never run."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.logging import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

from sail_vision.errors import CheckpointError
from sail_vision.mmseg.checkpoints import (HOOK_TYPE, UnsafeCheckpointError, add_checkpoint_hook,
                                           check_checkpoint_file, from_plain, load_from_local_weights_only,
                                           to_plain)


def test_the_crafted_file_really_calls_os_system(tmp_path, crafted_checkpoint):
    """So the tests that check the marker is NOT created can fail: the pickle's payload is a call of
    os.system (found by scanning it, without running it)."""
    path = crafted_checkpoint(tmp_path / "evil.pth", tmp_path / "MARKER")
    assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == ["posix.system"]
    assert b"touch " + str(tmp_path / "MARKER").encode() in path.read_bytes()


@pytest.mark.parametrize("zip_format", [True, False], ids=["torch.save", "raw-pickle"])
def test_crafted_checkpoint_is_refused_with_one_line(tmp_path, monkeypatch, zip_format, crafted_checkpoint):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # a user's environment cannot turn safety off
    path = crafted_checkpoint(tmp_path / "evil.pth", tmp_path / "MARKER", zip_format=zip_format)
    with pytest.raises(UnsafeCheckpointError) as info:
        load_from_local_weights_only(str(path))
    message = str(info.value)
    assert "\n" not in message and "evil.pth" in message and "weights_only=True" in message
    if zip_format:
        assert "posix.system" in message
        with pytest.raises(UnsafeCheckpointError, match="posix.system"):
            check_checkpoint_file(str(path))  # found by scanning, before anything is built
    # every mmengine loading path goes through the registered loader
    with pytest.raises(UnsafeCheckpointError):
        CheckpointLoader.load_checkpoint(str(path), map_location="cpu")
    assert not (tmp_path / "MARKER").exists()


def test_missing_and_unreadable_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_from_local_weights_only(str(tmp_path / "missing.pth"))
    with pytest.raises(CheckpointError, match="not found"):
        check_checkpoint_file(str(tmp_path / "missing.pth"))
    with pytest.raises(CheckpointError, match="is a folder; give a .pth file"):
        check_checkpoint_file(str(tmp_path))
    (tmp_path / "model.safetensors").write_bytes(b"{}")
    with pytest.raises(CheckpointError, match="is a safetensors file"):
        check_checkpoint_file(str(tmp_path / "model.safetensors"))
    (tmp_path / "truncated.pth").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(CheckpointError, match="cannot be read") as info:
        load_from_local_weights_only(str(tmp_path / "truncated.pth"))
    assert "\n" not in str(info.value)


def test_plain_form_round_trips_history_buffers_exactly():
    buffer = HistoryBuffer([0.5, 1.25, 3.0], [1, 2, 1], max_length=7)
    state = {"log_scalars": OrderedDict(loss=buffer), "runtime_info": OrderedDict(eta=np.float64(2.5), it=np.int64(3),
                                                                                   keep=[np.float32(1.5)])}
    plain = to_plain(state)
    assert isinstance(plain["runtime_info"]["eta"], float) and plain["runtime_info"]["eta"] == 2.5
    assert type(plain["runtime_info"]["it"]) is int and plain["runtime_info"]["keep"] == [1.5]
    assert type(plain["log_scalars"]) is OrderedDict
    back = from_plain(plain)
    restored = back["log_scalars"]["loss"]
    assert isinstance(restored, HistoryBuffer) and restored.max_length == 7
    for got, want in zip(restored.data, buffer.data):
        assert got.dtype == want.dtype and np.array_equal(got, want)
    assert restored.mean() == buffer.mean()


def test_runner_checkpoints_load_with_weights_only(trained):
    runner, _, _ = trained
    path = f"{runner.work_dir}/iter_60.pth"
    assert torch.serialization.get_unsafe_globals_in_checkpoint(path) == []
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert {"meta", "state_dict", "message_hub", "optimizer", "param_schedulers"} <= set(checkpoint)
    saved = checkpoint["state_dict"]
    assert not any(k.startswith("backbone.") for k in saved)  # 7B frozen weights are never saved
    assert any(k.startswith("decode_head.") for k in saved)
    loss = from_plain(checkpoint["message_hub"])["log_scalars"]["train/loss"]
    assert len(loss.data[0]) == 60 and np.array_equal(loss.data[0], runner.message_hub.get_scalar("train/loss").data[0])


def test_hook_is_added_once_and_every_config_lists_it():
    cfg = Config(dict(custom_hooks=[dict(type="EMAHook")]))
    assert add_checkpoint_hook(cfg) and not add_checkpoint_hook(cfg)
    assert [h["type"] for h in cfg.custom_hooks] == ["EMAHook", HOOK_TYPE]
    from pathlib import Path

    configs = Path(__file__).resolve().parents[2] / "configs"
    for path in sorted(configs.glob("*/*.py")):
        assert not add_checkpoint_hook(Config.fromfile(str(path))), path
