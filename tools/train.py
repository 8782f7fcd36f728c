#!/usr/bin/env python
"""Train any mmengine/mmseg config with mmengine's Runner (a thin launcher).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                                 [--cfg-options key=value ...] [--launcher none|pytorch|slurm|mpi]

Runs on mmcv-lite and loads the checkpoints you name under torch>=2.6 (see
sail_vision/mmseg/compat.py). Without a distributed launcher mmengine turns SyncBN into BN.
Full documentation: docs/segmentation.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also works from a source checkout


def main(argv=None) -> None:
    from sail_vision.mmseg import launch  # applies the mmcv-lite fix before mmseg is imported

    parser = argparse.ArgumentParser(description="Train a model from an mmengine config file.")
    parser.add_argument("config", help="config file (e.g. configs/sail/*.py)")
    parser.add_argument("--resume", nargs="?", const="auto", default=None, metavar="CKPT",
                        help="resume training: alone, from the latest checkpoint in the work dir; with "
                             "a path, from that checkpoint (default: start fresh)")
    parser.add_argument("--amp", action="store_true",
                        help="automatic mixed precision on GPU (AmpOptimWrapper, dynamic loss scale; "
                             "default: off)")
    launch.add_common_arguments(parser)
    args = parser.parse_args(argv)

    import torch

    cfg = launch.load_config(args, "train.py")
    if args.amp:
        if not torch.cuda.is_available():
            sys.exit("train.py: error: --amp needs a GPU (mmengine's AmpOptimWrapper does not run on CPU); "
                     "drop --amp")
        if cfg.optim_wrapper.get("type", "OptimWrapper") != "AmpOptimWrapper":
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    launch.run(cfg, "train", "train.py")


if __name__ == "__main__":
    main()
