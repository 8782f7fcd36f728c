"""``sail-vision consolidate``: join the parts of a finished extraction into single files."""

from __future__ import annotations

import argparse

import numpy as np

EPILOG = """\
A folder extracted with --no-consolidate (or whose join was interrupted) keeps its feature arrays in
parts/part-NNNNN/; open_feature_dir, probes and pca read it as it is. This writes the single
layer-{k}_{pool}.npy files (copied in chunks; one part is linked, not copied) and removes parts/.
It needs free space for one copy of the features while it runs.

example:
  sail-vision consolidate feats/in1k-train
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "consolidate", help="join the parts of a finished extraction into single .npy files",
        description=__doc__.split("\n\n")[0].strip("`").split(": ", 1)[-1], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="the --out folder of a finished `sail-vision extract`")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from ..extraction.finishing import join_features
    from ..feature_store import check_free_space, open_feature_dir
    from ..folder_lock import hold_folder

    folder = Path(args.folder)
    features = open_feature_dir(folder)  # a finished, well-formed folder, parted or not
    if features.consolidated:
        print(f"{folder}: already consolidated; nothing to do")
        return 0
    with hold_folder(folder, "sail-vision consolidate", option="folder"):
        parts = len(features.manifest["parts"]["items"])
        copied = 0 if parts == 1 else sum(int(np.prod(info["shape"])) * np.dtype(info["dtype"]).itemsize
                                           for info in features.manifest["features"].values())
        check_free_space(folder, copied, option="folder")
        join_features(folder)
    print(f"{folder}: joined {parts} part(s) into {len(features.names)} "
          f"feature file(s)")
    return 0

