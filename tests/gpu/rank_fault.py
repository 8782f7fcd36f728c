"""``torchrun ... rank_fault.py EXTRACT-ARGS``: sail-vision extract where rank 1 raises after rank 0 planned
the run and before any part starts (reading the manifest's parts), as a full disk or a bad mount would."""

import os
import sys

import sail_vision.extraction.runner as runner
from sail_vision.cli import main

planned_parts = runner.parts_from_manifest


def parts_from_manifest(manifest):
    if os.environ.get("RANK") == "1":
        raise OSError("rank 1 cannot read the plan: stale file handle")
    return planned_parts(manifest)


runner.parts_from_manifest = parts_from_manifest
sys.exit(main(["extract", *sys.argv[1:]]))
