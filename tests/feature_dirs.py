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
