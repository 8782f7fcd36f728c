#!/usr/bin/env python
"""Evaluate a checkpoint on a config's test set with mmengine's Runner (a thin launcher).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--tta] [--out DIR] [--show-dir DIR]
                                           [--cfg-options KEY=VALUE ...] [--launcher ...]

The config, the --cfg-options values, the paths and the checkpoint are checked before the Runner
starts (one-line errors, exit status 2); the checkpoint is loaded with torch.load(weights_only=True).
Full documentation: docs/segmentation.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also works from a source checkout

TOOL = "test.py"


def main(argv=None) -> None:
    from sail_vision.errors import SailVisionError

    try:
        _test(argv)
    except SailVisionError as exc:
        print(f"{TOOL}: error: {exc}", file=sys.stderr)
        sys.exit(2)


def _test(argv) -> None:
    from sail_vision.mmseg import launch

    parser = argparse.ArgumentParser(description="Test a checkpoint with an mmengine config file.")
    parser.add_argument("config", help="config file used for training")
    parser.add_argument("checkpoint", help="checkpoint file written by tools/train.py")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation with the config's tta_model and tta_pipeline "
                             "(default: off)")
    parser.add_argument("--out", help="also save predicted label maps (PNG) in this folder (default: none; "
                                      "needs an IoUMetric test_evaluator)")
    parser.add_argument("--show-dir", help="also save painted predictions in this folder (default: none; "
                                           "needs a SegVisualizationHook, which draws every `interval`-th "
                                           "image: every image in the demo configs, every 50th in the others)")
    launch.add_common_arguments(parser)
    args = parser.parse_args(argv)

    from sail_vision.errors import InputError

    cfg = launch.load_config(args, strict_checkpoint=True)  # a checkpoint of another model is an error
    cfg.load_from = args.checkpoint
    if args.tta:
        if "tta_model" not in cfg or "tta_pipeline" not in cfg:
            raise InputError(f"--tta needs tta_model and tta_pipeline in {args.config}")
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.show_dir:
        if "visualization" not in cfg.get("default_hooks", {}):
            raise InputError("--show-dir needs a SegVisualizationHook in default_hooks")
        cfg.default_hooks.visualization.draw = True
        cfg.visualizer.save_dir = args.show_dir
    if args.out:
        cfg.test_evaluator.output_dir = args.out
        cfg.test_evaluator.keep_results = True
    launch.check(cfg, ["test_dataloader"])
    launch.run(cfg, "test")


if __name__ == "__main__":
    main()
