"""Shared fixtures: the upstream reference fixture and small random SAIL checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from sail_vision.checkpoint_generator import make_checkpoint

ROOT = Path(__file__).resolve().parents[1]
#: The upstream outputs the parity tests compare against (kept in the repo; see its README.md).
REFERENCE_DIR = Path(os.environ.get("SAIL_REFERENCE_FIXTURE",
                                    ROOT / "tests" / "fixtures" / "sail_reference_tiny"))

torch.set_num_threads(min(2, torch.get_num_threads()))

# Weight digests are cached per user; the tests (and the processes they start) keep theirs apart.
if "SAIL_VISION_CACHE_DIR" not in os.environ:
    import tempfile

    os.environ["SAIL_VISION_CACHE_DIR"] = tempfile.mkdtemp(prefix="sail-vision-test-cache-")


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """The upstream outputs on a tiny checkpoint (tests/fixtures/sail_reference_tiny)."""
    if not (REFERENCE_DIR / "manifest.json").is_file():
        pytest.fail(f"reference fixture not found at {REFERENCE_DIR}: it is part of the repository "
                    f"(restore it with git), or set SAIL_REFERENCE_FIXTURE to another copy")
    return REFERENCE_DIR


@pytest.fixture(scope="session")
def reference_manifest(reference_dir) -> dict:
    return json.loads((reference_dir / "manifest.json").read_text())


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A random checkpoint in SAIL's format: 4 blocks, hidden 256, patch 8 (seed 0)."""
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny", "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_checkpoint):
    from sail_vision import SailEncoder

    return SailEncoder.from_pretrained(tiny_checkpoint)
