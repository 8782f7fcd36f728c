"""What tools/train.py and tools/test.py share: common options, config loading, running a Runner."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .compat import trusted_checkpoint_loading


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--work-dir, --cfg-options, --launcher (and torchrun's --local-rank)."""
    from mmengine.config import DictAction

    parser.add_argument("--work-dir", help="where logs, metrics and checkpoints go (default: the config's "
                                           "work_dir, else ./work_dirs/<config name>)")
    parser.add_argument("--cfg-options", nargs="+", action=DictAction, metavar="KEY=VALUE",
                        help="override config entries, e.g. train_cfg.max_iters=100 (default: none)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher for distributed runs (default: none)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)


def load_config(args: argparse.Namespace, tool: str):
    """The config named by ``args.config`` with the common options applied; exits on a missing file."""
    from mmengine.config import Config

    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    if not Path(args.config).is_file():
        sys.exit(f"{tool}: error: config file {args.config!r} not found")
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = str(Path("work_dirs") / Path(args.config).stem)
    return cfg


def run(cfg, method: str, tool: str):
    """Build the config's Runner and call ``method`` ('train' / 'test') on it.

    Checkpoints the user named (resume, load_from) load inside ``trusted_checkpoint_loading``;
    sail-vision's input errors end the tool with a one-line message.
    """
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    from ..errors import SailVisionError

    try:
        runner = RUNNERS.build(cfg) if "runner_type" in cfg else Runner.from_cfg(cfg)
        with trusted_checkpoint_loading():
            return getattr(runner, method)()
    except SailVisionError as exc:
        sys.exit(f"{tool}: error: {exc}")
