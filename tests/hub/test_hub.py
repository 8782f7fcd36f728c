"""Hub ids: only the needed shards are downloaded, loads equal local ones bit for bit, the cache
works offline, and bad ids, revisions and repos give one-line errors."""

from __future__ import annotations

import json

import pytest
import torch

from sail_vision import SailEncoder
from sail_vision.checkpoint import open_checkpoint
from sail_vision.errors import CheckpointError
from sail_vision.hub import is_hub_id, parse_hub_id

from .conftest import COMMIT, REPO

METADATA = {"config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors.index.json"}


def _shards_for_blocks(folder, num_blocks: int) -> set[str]:
    """The index's shards holding blocks 1..num_blocks, the embedding table, vis_embed and the norm
    (worked out here from the index alone, independently of sail_vision)."""
    weight_map = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    wanted = {"model.embed_tokens.weight", "model.vis_embed.weight", "model.norm.weight"}
    return {file for name, file in weight_map.items()
            if name in wanted or any(name.startswith(f"model.layers.{i}.") for i in range(num_blocks))}


def _state(encoder):
    return {k: v.clone() for k, v in encoder.state_dict().items()}


def test_max_layer_1_downloads_only_its_shards_and_equals_a_local_load(hub, sharded_checkpoint, monkeypatch):
    shards = _shards_for_blocks(sharded_checkpoint, 1)
    all_shards = set(json.loads((sharded_checkpoint / "model.safetensors.index.json").read_text())
                     ["weight_map"].values())
    assert len(all_shards) > len(shards) + 2  # the layout leaves most shards on the hub

    encoder = SailEncoder.from_pretrained(REPO, max_layer=1)
    got = hub.downloaded(REPO)
    assert set(got) == METADATA | shards
    for name, size in got.items():  # each file once, whole
        assert size == (sharded_checkpoint / name).stat().st_size, name
    assert encoder.checkpoint_repo == REPO and encoder.checkpoint_revision == COMMIT

    local = SailEncoder.from_pretrained(sharded_checkpoint, max_layer=1)
    want, have = _state(local), _state(encoder)
    assert want.keys() == have.keys()
    for key in want:
        assert torch.equal(want[key], have[key]), key

    # offline afterwards: no request reaches the server, same weights
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = len(hub.requests)
    again = SailEncoder.from_pretrained(REPO, max_layer=1)
    assert len(hub.requests) == before
    assert all(torch.equal(want[k], v) for k, v in _state(again).items())
    # a deeper layer offline needs shards that were never fetched: a one-line error naming HF_HUB_OFFLINE
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE") as info:
        SailEncoder.from_pretrained(REPO, max_layer=3)
    assert "\n" not in str(info.value)


def test_cache_is_reused_and_a_deeper_load_fetches_only_the_new_shards(hub, sharded_checkpoint):
    SailEncoder.from_pretrained(REPO, max_layer=1)
    first = hub.downloaded(REPO)
    SailEncoder.from_pretrained(f"{REPO}@v1", max_layer=2)
    second = hub.downloaded(REPO)
    assert {f for f in second if second[f] > first.get(f, 0)} == (
        _shards_for_blocks(sharded_checkpoint, 2) - _shards_for_blocks(sharded_checkpoint, 1))
    SailEncoder.from_pretrained(f"{REPO}@{COMMIT}")  # every block: the rest of the shards but lm_head's
    full = hub.downloaded(REPO)
    assert set(full) == METADATA | _shards_for_blocks(sharded_checkpoint, 4)
    assert all(full[f] == (sharded_checkpoint / f).stat().st_size for f in full)


def test_reading_past_the_downloaded_shards_is_a_clear_error(hub):
    ckpt = open_checkpoint(REPO, max_layer=1)
    assert ckpt.partial and ckpt.absent_files and ckpt.revision == COMMIT
    with pytest.raises(CheckpointError, match="were not downloaded"):
        ckpt.read_tensors({"model.layers.3.input_layernorm.weight": (256,)}, dtype=torch.float32)


@pytest.mark.parametrize("spec, message", [
    ("sail-test/no-such-repo", "no hub repo sail-test/no-such-repo"),
    (f"{REPO}@no-such-branch", "has no revision 'no-such-branch'"),
])
def test_bad_ids_and_revisions_are_one_line_errors(hub, spec, message):
    with pytest.raises(CheckpointError, match=message) as info:
        SailEncoder.from_pretrained(spec, max_layer=1)
    assert "\n" not in str(info.value)


def test_a_repo_that_is_not_sail_is_refused(hub, tmp_path):
    other = tmp_path / "bert"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 8}))
    (other / "model.safetensors").write_bytes(b"")
    hub.add_repo("someone/bert", other, "f" * 40)
    with pytest.raises(CheckpointError, match="not a usable SAIL checkpoint") as info:
        SailEncoder.from_pretrained("someone/bert")
    assert "\n" not in str(info.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "README.md").write_text("hi")
    hub.add_repo("someone/empty", empty, "e" * 40)
    with pytest.raises(CheckpointError, match="has no config.json: it is not a SAIL checkpoint"):
        SailEncoder.from_pretrained("someone/empty")


def test_no_network_and_nothing_cached_names_the_settings(hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match="HF_HUB_OFFLINE is set"):
        SailEncoder.from_pretrained(REPO, max_layer=1)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    hub.stop()
    with pytest.raises(CheckpointError, match="cannot be reached.*HF_ENDPOINT") as info:
        SailEncoder.from_pretrained(REPO, max_layer=1)
    assert "\n" not in str(info.value)


def test_a_local_folder_keeps_priority_and_tilde_is_expanded(hub, sharded_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sail-test").mkdir()
    (tmp_path / "sail-test" / "SAIL-tiny").symlink_to(sharded_checkpoint)
    ckpt = open_checkpoint(REPO)
    assert ckpt.repo_id is None and not hub.requests
    monkeypatch.setenv("HOME", str(tmp_path))
    assert open_checkpoint("~/sail-test/SAIL-tiny").path == tmp_path / "sail-test" / "SAIL-tiny"


def test_hub_id_syntax():
    assert parse_hub_id("org/name") == ("org/name", "main")
    assert parse_hub_id("org/name@v1.0") == ("org/name", "v1.0")
    for bad in ("name", "/abs/path", "a/b/c", "./x", "org/../x", "org/name@"):
        assert not is_hub_id(bad), bad
    with pytest.raises(CheckpointError, match="not a directory; expected a SAIL checkpoint folder .or a Hugging"):
        open_checkpoint("/no/such/folder")


def test_other_layouts_single_file_and_shards_in_a_subfolder(hub, tiny_checkpoint, sharded_checkpoint, tmp_path):
    """A repo with one model.safetensors is fetched whole; an index naming shards in a subfolder works."""
    hub.add_repo("sail-test/single", tiny_checkpoint, "a" * 40)
    with pytest.raises(CheckpointError, match="one model.safetensors, not in the cache yet"):
        open_checkpoint("sail-test/single", weights=False)  # describing it would download it all
    assert not hub.downloaded("sail-test/single").get("model.safetensors")
    single = SailEncoder.from_pretrained("sail-test/single", max_layer=2)
    assert open_checkpoint("sail-test/single", weights=False).revision == "a" * 40  # now from the cache
    assert "model.safetensors" in hub.downloaded("sail-test/single")
    local = SailEncoder.from_pretrained(tiny_checkpoint, max_layer=2)
    assert all(torch.equal(v, single.state_dict()[k]) for k, v in local.state_dict().items())

    nested = tmp_path / "nested"
    (nested / "weights").mkdir(parents=True)
    index = json.loads((sharded_checkpoint / "model.safetensors.index.json").read_text())
    for path in sharded_checkpoint.iterdir():
        if path.name.endswith(".safetensors"):
            (nested / "weights" / path.name).symlink_to(path)
        elif path.name != "model.safetensors.index.json":
            (nested / path.name).symlink_to(path)
    index["weight_map"] = {k: f"weights/{v}" for k, v in index["weight_map"].items()}
    (nested / "model.safetensors.index.json").write_text(json.dumps(index))
    hub.add_repo("sail-test/nested", nested, "b" * 40)
    got = SailEncoder.from_pretrained("sail-test/nested", max_layer=1)
    assert {f.split("/")[-1] for f in hub.downloaded("sail-test/nested") if f.startswith("weights/")} == \
        _shards_for_blocks(sharded_checkpoint, 1)
    want = SailEncoder.from_pretrained(sharded_checkpoint, max_layer=1)
    assert all(torch.equal(v, got.state_dict()[k]) for k, v in want.state_dict().items())
