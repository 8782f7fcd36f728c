"""Fixtures of the sources tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from image_factory import save_rgb

CLASSES = ["zebra", "cat", "dog"]  # folder order is sorted: cat, dog, zebra


@pytest.fixture
def class_folder(tmp_path) -> Path:
    """Three classes of two or three images each, in two sizes and two formats."""
    root = tmp_path / "folder"
    for c, name in enumerate(CLASSES):
        for i in range(2 + c % 2):
            suffix = ".png" if i % 2 else ".jpg"
            save_rgb(root / name / f"{name}_{i}{suffix}", 24 + 8 * i, 16, seed=10 * c + i)
    return root
