"""A synthetic dataset in ADE20K's folder layout plus a random SAIL checkpoint, for tests and the demo.

    python -m sail_vision.mmseg.synthetic [ROOT]      # default ROOT: data/sail_seg_demo

writes ``ROOT/checkpoint`` (the 'tiny' random SAIL checkpoint, patch 8) and
``ROOT/{images,annotations}/{training,validation}`` (64x64 JPEG images, PNG label maps). Each
image is a grid of 16x16 cells; every cell belongs to one of the four classes, painted in
that class's colour with per-cell jitter and per-pixel noise, so the classes are learnable from
colour. Labels follow ADE20K: 0 = "other" (ignored with ``reduce_zero_label``), classes are 1..K.
Nothing is downloaded; the same seed gives the same files.

:class:`sail_vision.mmseg.datasets.SyntheticColourDataset` reads it in mmseg, with its own class
names and palette.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import InputError
from .datasets import CLASS_COLOURS


def synthetic_sample(rng: np.random.Generator, size: int, cell: int):
    """One (image uint8 (size, size, 3), label uint8 (size, size) with values 1..4) pair."""
    cells = size // cell
    classes = rng.integers(0, len(CLASS_COLOURS), size=(cells, cells))
    jitter = rng.normal(0.0, 12.0, size=(cells, cells, 3))
    colour = np.asarray(CLASS_COLOURS, dtype=np.float32)[classes] + jitter
    image = np.kron(colour, np.ones((cell, cell, 1)))
    image = image + rng.normal(0.0, 10.0, size=image.shape)
    label = np.kron(classes + 1, np.ones((cell, cell), dtype=np.int64))
    return np.clip(image, 0, 255).astype(np.uint8), label.astype(np.uint8)


def make_synthetic_dataset(root: str | Path, *, num_train: int = 48, num_val: int = 16, size: int = 64,
                           cell: int = 16, seed: int = 0) -> Path:
    """Write the dataset under ``root`` (ADE20K layout) and return ``root``."""
    if size <= 0 or cell <= 0 or size % cell:
        raise InputError(f"size={size} must be a positive multiple of cell={cell}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("training", num_train), ("validation", num_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, label = synthetic_sample(rng, size, cell)
            name = f"synthetic_{split}_{i:05d}"
            Image.fromarray(image).save(root / "images" / split / f"{name}.jpg", quality=95)
            Image.fromarray(label).save(root / "annotations" / split / f"{name}.png")
    return root


def make_demo(root: str | Path = "data/sail_seg_demo", *, seed: int = 0) -> Path:
    """The demo's data: ``root/checkpoint`` (tiny random SAIL) and the synthetic dataset."""
    from ..checkpoint_generator import make_checkpoint

    root = Path(root)
    if not (root / "checkpoint" / "config.json").is_file():
        make_checkpoint(root / "checkpoint", "tiny", seed=seed, overwrite=True)
    make_synthetic_dataset(root, seed=seed)
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write the segmentation demo data: a random tiny SAIL "
                                                 "checkpoint and a synthetic ADE20K-layout dataset.")
    parser.add_argument("root", nargs="?", default="data/sail_seg_demo",
                        help="output folder (default: data/sail_seg_demo, what the demo configs read)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    root = make_demo(args.root, seed=args.seed)
    print(f"wrote {root}/checkpoint and {root}/images, {root}/annotations")


if __name__ == "__main__":
    main()
