#!/usr/bin/env python
"""Train any mmengine/mmseg config with mmengine's Runner (a thin launcher).

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
                                 [--cfg-options KEY=VALUE ...] [--launcher none|pytorch|slurm|mpi]

Before the Runner starts, the config, the --cfg-options values and every path it names are
checked (one-line errors, exit status 2); checkpoints are written and read with
WeightsOnlyCheckpointHook, so they load with torch.load(weights_only=True). Without a distributed
launcher mmengine turns SyncBN into BN. Full documentation: docs/segmentation.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also works from a source checkout

TOOL = "train.py"


def main(argv=None) -> None:
    from sail_vision.errors import SailVisionError

    try:
        _train(argv)
    except SailVisionError as exc:
        print(f"{TOOL}: error: {exc}", file=sys.stderr)
        sys.exit(2)


def _train(argv) -> None:
    from sail_vision.mmseg import launch

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
    from mmengine.runner import find_latest_checkpoint

    from sail_vision.errors import InputError
    from sail_vision.mmseg.checkpoints import check_checkpoint_file

    cfg = launch.load_config(args, strict_checkpoint=bool(args.resume))  # resume: the checkpoint must fit
    if args.amp:
        if not torch.cuda.is_available():
            raise InputError("--amp needs a GPU (mmengine's AmpOptimWrapper does not run on CPU); drop --amp")
        if cfg.optim_wrapper.get("type", "OptimWrapper") != "AmpOptimWrapper":
            cfg.optim_wrapper.type = "AmpOptimWrapper"
            cfg.optim_wrapper.setdefault("loss_scale", "dynamic")
    if args.resume == "auto":
        cfg.resume, cfg.load_from = True, None
        latest = find_latest_checkpoint(cfg.work_dir) if Path(cfg.work_dir).is_dir() else None
        if latest:
            check_checkpoint_file(latest)
    elif args.resume:
        cfg.resume, cfg.load_from = True, args.resume
    loaders = ["train_dataloader"] + (["val_dataloader"] if cfg.get("val_cfg") else [])
    launch.check(cfg, loaders)
    with launch.work_dir_lock(cfg.work_dir, TOOL):
        launch.run(cfg, "train")


if __name__ == "__main__":
    main()
