"""Synthetic segmentation and depth datasets plus a random SAIL checkpoint, for tests and the demos.

    python -m sail_vision.mmseg.synthetic [ROOT]                 # default ROOT: data/sail_seg_demo
    python -m sail_vision.mmseg.synthetic --task depth [ROOT]    # default ROOT: data/sail_depth_demo

writes ``ROOT/checkpoint`` (the 'tiny' random SAIL checkpoint, patch 8) and
``ROOT/{images,annotations}/{training,validation}`` (64x64 JPEG images, PNG label maps). Each
image is a grid of 16x16 cells; every cell belongs to one of the four classes, painted in
that class's colour with per-cell jitter and per-pixel noise, so the classes are learnable from
colour. Labels follow ADE20K: 0 = "other" (ignored with ``reduce_zero_label``), classes are 1..K.
Nothing is downloaded; the same seed gives the same files.

:class:`sail_vision.mmseg.datasets.SyntheticColourDataset` reads it in mmseg, with its own class
names and palette.

``--task depth`` writes the same kind of images in mmseg's NYU layout
(``ROOT/{images,annotations}/{train,test}``): each cell's depth is set by its colour class
(:data:`CLASS_DEPTHS_M`) plus a gentle left-to-right slope, stored as 16-bit PNG in millimetres, with
about 3 % of the pixels 0 ("no measurement"), as NYUv2's maps are. mmseg's own ``NYUDataset`` reads it.
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


#: The depth (metres) of each colour class in the synthetic depth data.
CLASS_DEPTHS_M = (1.0, 2.5, 4.0, 6.0)
#: Fraction of depth pixels left at 0 ("no measurement") in the synthetic depth data.
DEPTH_HOLE_FRACTION = 0.03


def synthetic_depth_sample(rng: np.random.Generator, size: int, cell: int):
    """One (image uint8 (size, size, 3), depth uint16 millimetres (size, size), 0 = hole) pair."""
    image, label = synthetic_sample(rng, size, cell)
    depth_m = np.asarray(CLASS_DEPTHS_M, dtype=np.float64)[label.astype(np.int64) - 1]
    depth_m = depth_m * (1.0 + 0.1 * np.linspace(0.0, 1.0, size)[None, :])
    depth_mm = np.round(depth_m * 1000.0).astype(np.uint16)
    depth_mm[rng.random(depth_mm.shape) < DEPTH_HOLE_FRACTION] = 0
    return image, depth_mm


def _write_pairs(root: str | Path, splits: dict[str, int], sample, *, size: int, cell: int, seed: int) -> Path:
    """Write ``count`` (image .jpg, target .png) pairs per split under ``root/{images,annotations}/SPLIT``."""
    if size <= 0 or cell <= 0 or size % cell:
        raise InputError(f"size={size} must be a positive multiple of cell={cell}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, target = sample(rng, size, cell)
            name = f"synthetic_{split}_{i:05d}"
            Image.fromarray(image).save(root / "images" / split / f"{name}.jpg", quality=95)
            Image.fromarray(target).save(root / "annotations" / split / f"{name}.png")
    return root


def make_synthetic_depth_dataset(root: str | Path, *, num_train: int = 48, num_val: int = 16, size: int = 64,
                                 cell: int = 16, seed: int = 0) -> Path:
    """Write the depth dataset under ``root`` (mmseg's NYU layout: train / test) and return ``root``."""
    return _write_pairs(root, {"train": num_train, "test": num_val}, synthetic_depth_sample, size=size, cell=cell,
                        seed=seed)


def make_synthetic_dataset(root: str | Path, *, num_train: int = 48, num_val: int = 16, size: int = 64,
                           cell: int = 16, seed: int = 0) -> Path:
    """Write the dataset under ``root`` (ADE20K layout: training / validation) and return ``root``."""
    return _write_pairs(root, {"training": num_train, "validation": num_val}, synthetic_sample, size=size,
                        cell=cell, seed=seed)


#: Where each task's demo data goes by default (what the tiny demo configs read).
DEFAULT_ROOTS = {"segmentation": "data/sail_seg_demo", "depth": "data/sail_depth_demo"}


def make_demo(root: str | Path | None = None, *, seed: int = 0, task: str = "segmentation") -> Path:
    """The demo's data: ``root/checkpoint`` (tiny random SAIL) and the synthetic dataset of ``task``."""
    from ..checkpoint_generator import make_checkpoint

    if task not in DEFAULT_ROOTS:
        raise InputError(f"task {task!r} is not one of {', '.join(DEFAULT_ROOTS)}")
    root = Path(root if root is not None else DEFAULT_ROOTS[task]).expanduser()
    if not (root / "checkpoint" / "config.json").is_file():
        make_checkpoint(root / "checkpoint", "tiny", seed=seed, overwrite=True)
    writer = make_synthetic_depth_dataset if task == "depth" else make_synthetic_dataset
    writer(root, seed=seed)
    return root


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Write demo data: a random tiny SAIL checkpoint and a "
                                                 "synthetic dataset (ADE20K layout for segmentation, NYU "
                                                 "layout for depth).")
    parser.add_argument("root", nargs="?", default=None,
                        help="output folder (default: data/sail_seg_demo, or data/sail_depth_demo with "
                             "--task depth: what the tiny demo configs read)")
    parser.add_argument("--task", choices=sorted(DEFAULT_ROOTS), default="segmentation",
                        help="which dataset to write (default: segmentation)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    args = parser.parse_args(argv)
    root = make_demo(args.root, seed=args.seed, task=args.task)
    print(f"wrote {root}/checkpoint and {root}/images, {root}/annotations")


if __name__ == "__main__":
    main()
