"""Fixtures of the extraction tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_factory import save_rgb


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Six good images in two sizes (nested folders) for layout-independent extraction tests."""
    root = tmp_path / "images"
    for i in range(6):
        size = (40, 32) if i % 2 else (48, 48)
        save_rgb(root / ("sub" if i >= 3 else "") / f"img{i}.png", *size, seed=i)
    return root
