"""``sail-vision consolidate``: join the parts of a finished extraction into single files."""

from __future__ import annotations

import argparse

EPILOG = """\
A folder extracted with --no-consolidate (or whose join was interrupted) keeps its feature arrays in
parts/part-NNNNN/; open_feature_dir, probes and pca read it as it is. This writes the single
layer-{k}_{pool}.npy files (copied in chunks; one part is linked, not copied) and removes parts/.
It needs free space for one copy of the features while it runs (checked first). It can be
interrupted at any moment and run again; on a consolidated folder it removes what an interrupted
join left (parts/, temporary files). Files under parts/ that sail-vision did not write are refused
by name, and nothing is deleted.

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
    from ..feature_store import PARTS_DIR, STATE_DIR, open_feature_dir, temporary_target
    from ..folder_lock import hold_folder

    folder = Path(args.folder).expanduser()
    features = open_feature_dir(folder)  # a finished, well-formed folder, parted or not
    leftovers = (folder / PARTS_DIR).exists() or (folder / STATE_DIR).exists() or any(
        temporary_target(p.name) for p in folder.iterdir())
    if features.consolidated and not leftovers:
        print(f"{folder}: already consolidated; nothing to do")
        return 0
    with hold_folder(folder, "sail-vision consolidate", option="folder"):
        parts = len((features.manifest.get("parts") or {}).get("items") or [])
        join_features(folder)  # checks parts/ and the free space first; finishes an interrupted cleanup
    if features.consolidated:
        print(f"{folder}: already consolidated; removed what an interrupted run left")
    else:
        print(f"{folder}: joined {parts} part(s) into {len(features.names)} feature file(s)")
    return 0
