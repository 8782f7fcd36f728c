"""Helpers for tests that compare whole feature folders and run `sail-vision extract` as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sail_vision.pause_points import MARKER_ENV, PAUSE_ENV


def compare_feature_dirs(a: Path, b: Path) -> None:
    """Every file byte for byte; the manifests apart from their "run" record (times, world size)."""
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        if name != "manifest.json":
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (a, b)]
    for manifest in manifests:
        assert manifest.pop("run")
    assert manifests[0] == manifests[1]


def extract_command(*args) -> list[str]:
    return [sys.executable, "-m", "sail_vision", "extract", *map(str, args)]


def start_paused(command: list[str], point: str, marker: Path, timeout: float = 90) -> subprocess.Popen:
    """Start ``command`` and return once it has stopped at pause point ``point`` (it waits there)."""
    marker.unlink(missing_ok=True)
    process = subprocess.Popen(command, env={**os.environ, PAUSE_ENV: point, MARKER_ENV: str(marker)},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not marker.is_file():
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"the process ended before reaching {point}: {out}\n{err}")
        assert time.monotonic() < deadline, f"{point} was not reached"
        time.sleep(0.05)
    assert marker.read_text() == point
    return process


def kill(process: subprocess.Popen) -> None:
    process.kill()
    process.wait()


def check_parted_targets(checkpoint, images, tmp_path: Path, options: dict, **target) -> None:
    """Extract ``images`` with their dense targets (``masks=`` or ``depths=``) as one part, as parts of
    two, and as unjoined parts: the lazily read targets equal the one-part ones, the joined folder equals
    the parted one byte for byte, and the parted one the one-part one apart from the part plan."""
    import numpy as np

    from sail_vision.extraction import extract
    from sail_vision.extraction.finishing import join_features
    from sail_vision.feature_store import MASKS_FILE, PARTS_DIR, open_feature_dir

    alone = {**options, "batch_size": 1, "batching": "grouped"}  # every image alone: features independent of parts
    one, parted, lazy = tmp_path / "one", tmp_path / "parted", tmp_path / "lazy"
    extract(checkpoint, images, one, **target, **alone)
    extract(checkpoint, images, parted, part_size=2, **target, **alone)
    extract(checkpoint, images, lazy, part_size=2, consolidate=False, **target, **alone)
    reader, reference = open_feature_dir(lazy), open_feature_dir(one)
    assert not reader.consolidated and (lazy / PARTS_DIR).is_dir() and not (lazy / MASKS_FILE).exists()
    for i in range(reference.num_valid):
        assert np.array_equal(reader.mask(i), reference.mask(i)) and reader.mask(i).dtype == reference.mask(i).dtype
    join_features(lazy)
    compare_feature_dirs(lazy, parted)
    manifests = [json.loads((d / "manifest.json").read_text()) for d in (one, parted)]
    assert manifests[0]["parts"]["count"] == 1 and manifests[1]["parts"]["count"] > 1
    for d, manifest in zip((one, parted), manifests):  # apart from the part plan, the same bytes
        manifest["parts"] = manifest["settings"]["part_size"] = None
        (d / "manifest.json").write_text(json.dumps(manifest))
    compare_feature_dirs(one, parted)
