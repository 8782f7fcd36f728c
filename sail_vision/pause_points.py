"""Named points where a process can be made to stop and wait, so tests can kill it exactly there.

Set ``SAIL_VISION_PAUSE_AT=name[,name...]`` and ``SAIL_VISION_PAUSE_MARKER=FILE``: when the process
reaches a listed point it writes the point's name to FILE and sleeps until it is killed. Unset (the
normal case) a point costs one environment lookup. Points are named ``area:moment``, e.g.
``extract:planning`` or ``atomic-write:manifest.json``; :data:`POINTS` lists them.
"""

from __future__ import annotations

import os
import time

PAUSE_ENV = "SAIL_VISION_PAUSE_AT"
MARKER_ENV = "SAIL_VISION_PAUSE_MARKER"

#: Every pause point in the code base, with where it is.
POINTS = {
    "extract:planning": "the output folder is locked, nothing is written yet",
    "atomic-write:manifest.json": "a new manifest.json is fully written under its temporary name, not yet renamed",
    "extract:overwrite": "--overwrite has removed the manifest and some of the old files",
    "extract:encoding": "the first batch of this process has been queued for writing",
    "extract:finalize": "valid.npy and failures.jsonl are written (of a part, or of the joined dataset), the "
                        "manifest still says unfinished",
    "extract:commit-part": "a part is finished in its work folder, not yet renamed to its own name",
    "extract:consolidate": "the parts are being joined: one feature file of the dataset is written",
    "extract:cleanup": "a part's manifest says complete, its working files are not removed yet",
    "extract:joined": "the joined files are in place and the manifest says consolidated; parts/ is not removed yet",
    "extract:remove-parts": "parts/ was checked for files sail-vision did not write; nothing removed yet",
    "extract:removing-parts": "one entry of parts/ has been removed, the others not yet",
}


def pause_point(name: str) -> None:
    """Stop here (forever) when ``name`` is listed in ``$SAIL_VISION_PAUSE_AT``; otherwise return."""
    wanted = os.environ.get(PAUSE_ENV)
    if not wanted or name not in wanted.split(","):
        return
    marker = os.environ.get(MARKER_ENV)
    if marker:  # written whole, then renamed: a test that sees the file can read the name
        with open(f"{marker}.{os.getpid()}.writing", "w", encoding="utf-8") as handle:
            handle.write(name)
        os.replace(f"{marker}.{os.getpid()}.writing", marker)
    while True:
        time.sleep(3600)
