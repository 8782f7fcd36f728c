"""What tools/train.py and tools/test.py share: common options, config loading and checks, running a Runner."""

from __future__ import annotations

import argparse
import os
from contextlib import contextmanager
from pathlib import Path

from ..errors import InputError
from ..folder_lock import hold_folder
from . import config_checks
from .checkpoints import add_checkpoint_hook


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--work-dir, --cfg-options, --launcher (and torchrun's --local-rank)."""
    parser.add_argument("--work-dir", help="where logs, metrics and checkpoints go (default: the config's "
                                           "work_dir, else ./work_dirs/<config name>)")
    parser.add_argument("--cfg-options", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override config entries, e.g. train_cfg.max_iters=100 "
                             "model.backbone.checkpoint=/models/SAIL-7B; values are parsed as mmengine's "
                             "DictAction does (numbers, True/False, None, [lists], (tuples)) (default: none)")
    parser.add_argument("--launcher", choices=["none", "pytorch", "slurm", "mpi"], default="none",
                        help="job launcher for distributed runs (default: none)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=0, help=argparse.SUPPRESS)


def load_config(args: argparse.Namespace, strict_checkpoint: bool = False):
    """The config named by ``args.config`` with the common options applied and
    :class:`~sail_vision.mmseg.checkpoints.WeightsOnlyCheckpointHook` added if it is missing
    (``strict_checkpoint``: a loaded checkpoint must hold exactly the model's weights)."""
    os.environ.setdefault("LOCAL_RANK", str(args.local_rank))
    cfg = config_checks.load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    if args.work_dir:
        cfg.work_dir = args.work_dir
    elif cfg.get("work_dir") is None:
        cfg.work_dir = str(Path("work_dirs") / Path(args.config).stem)
    add_checkpoint_hook(cfg, strict=strict_checkpoint)
    return cfg


def check(cfg, loaders) -> None:
    """:func:`~sail_vision.mmseg.config_checks.check_config`: one-line errors before the Runner logs anything."""
    config_checks.check_config(cfg, loaders)


def run(cfg, method: str):
    """Build the config's Runner and call ``method`` ('train' / 'test') on it."""
    from mmengine.registry import RUNNERS
    from mmengine.runner import Runner

    runner = RUNNERS.build(cfg) if "runner_type" in cfg else Runner.from_cfg(cfg)
    return getattr(runner, method)()


@contextmanager
def work_dir_lock(work_dir: str | Path, tool: str):
    """Hold ``work_dir`` for one training (global rank 0 only; see ``folder_lock.hold_folder``).

    A second ``tools/train.py`` on the same work dir stops at once with a one-line error naming the
    first (pid, host, since when) instead of overwriting its checkpoints.
    """
    if _global_rank() != 0:
        yield
        return
    with hold_folder(work_dir, tool, option="--work-dir"):
        yield


def _global_rank() -> int:
    for name in ("RANK", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0
