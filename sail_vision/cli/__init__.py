"""The ``sail-vision`` command line: one module per sub-command.

Each module in COMMANDS defines ``register(subparsers)``, which adds its parser and sets
``func`` to the function that runs it. Heavy imports happen inside those functions, so
``sail-vision --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import SailVisionError

#: Sub-command modules, in the order ``--help`` lists them.
COMMANDS = (
    "sail_vision.cli.make_checkpoint",
    "sail_vision.cli.info",
    "sail_vision.cli.extract",
    "sail_vision.cli.consolidate",
    "sail_vision.cli.pca",
    "sail_vision.cli.demo",
    "sail_vision.cli.probe",
    "sail_vision.cli.report",
    "sail_vision.cli.segment",
)


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="sail-vision",
        description="SAIL as a vision backbone: random checkpoints, feature extraction, probes, "
                    "segmentation. Run `sail-vision COMMAND --help` for each command's options.")
    parser.add_argument("--version", action="version", version=f"sail-vision {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS:
        importlib.import_module(module_name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except SailVisionError as exc:
        print(f"sail-vision {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sail-vision {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
