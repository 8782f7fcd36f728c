"""Fixtures: a stand-in hub serving a sharded random SAIL checkpoint, and an isolated HF cache."""

from __future__ import annotations

import pytest

from sail_vision.checkpoint_generator import make_checkpoint

from .stand_in_hub import StandInHub

REPO = "sail-test/SAIL-tiny"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="session")
def sharded_checkpoint(tmp_path_factory):
    """The tiny preset (seed 0) cut into shards of at most 1.5 MB: about two per block."""
    return make_checkpoint(tmp_path_factory.mktemp("hubckpt") / "tiny", "tiny", seed=0, max_shard_bytes=1_500_000)


@pytest.fixture
def hub(sharded_checkpoint, tmp_path, monkeypatch):
    """A running stand-in hub holding REPO (revisions main, v1 and COMMIT); huggingface_hub pointed
    at it with a fresh cache. Stops itself at the end of the test."""
    from huggingface_hub import constants

    server = StandInHub()
    server.add_repo(REPO, sharded_checkpoint, COMMIT, revisions=("main", "v1"))
    server.start()
    monkeypatch.setattr(constants, "ENDPOINT", server.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        yield server
    finally:
        server.stop()
