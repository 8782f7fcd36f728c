"""Which entries of a feature folder are the extractor's own, and the only code that removes them:
``--overwrite``, the cleanup at the end of a run, and free-space checks before anything is written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

from ..folder_lock import LOCK_FILE
from ..pause_points import pause_point
from .atomic_io import fsync_dir, temporary_target
from .format import (FEATURE_FILE_RE, MANIFEST_FILE, OWN_FILES, PARTS_DIR, STATE_DIR, FeatureStoreError,
                     manifest_files)


def _is_own_name(name: str, known: set[str]) -> bool:
    if name in OWN_FILES or name in known or FEATURE_FILE_RE.match(name):
        return True
    target = temporary_target(name)
    return target is not None and _is_own_name(target, known)


def extraction_entries(folder: str | Path, manifest: Mapping | None = None) -> tuple[list[Path], list[Path]]:
    """(the extractor's own entries, everything else) in ``folder``, the lock file left out.

    Own entries are the fixed names above, the files ``manifest`` lists, any ``layer-{k}_{pool}.npy``
    / ``layer-{k}_patch_offsets.npy``, and temporary files of those names left by a crash.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return [], []
    known = manifest_files(manifest)
    own, other = [], []
    for entry in sorted(folder.iterdir()):
        if entry.name == LOCK_FILE:
            continue
        (own if _is_own_name(entry.name, known) else other).append(entry)
    return own, other


def listing(entries: Sequence[Path], limit: int = 8, *, relative_to: Path | None = None) -> str:
    """``a.txt, sub/, ... and 3 more``: entries named for an error message (by name, or by path under
    ``relative_to``)."""
    names = [(e.name if relative_to is None else str(e.relative_to(relative_to)))
             + ("/" if e.is_dir() and not e.is_symlink() else "") for e in entries]
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def remove_extraction_files(folder: str | Path, manifest: Mapping | None = None, *,
                            keep_others: bool = False, option: str = "--out") -> None:
    """Remove what an extraction wrote in ``folder`` (see :func:`extraction_entries`), manifest first,
    so that an interruption leaves a folder that is recognisably an unfinished extraction. Unless
    ``keep_others``, refuses, listing them, when other files are present (``--overwrite``). Nothing it
    did not write is ever deleted."""
    folder = Path(folder)
    own, other = extraction_entries(folder, manifest)
    if other and not keep_others:
        raise FeatureStoreError(f"{option} {folder}: holds files sail-vision did not write ({listing(other)}); "
                                f"move them away or choose another {option}; nothing was deleted")
    own.sort(key=lambda e: e.name != MANIFEST_FILE)
    for index, entry in enumerate(own):
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink(missing_ok=True)
        if index == 0:
            fsync_dir(folder)
            pause_point("extract:overwrite")
    fsync_dir(folder)


def remove_temporary_files(folder: str | Path) -> None:
    """Remove the working folder and temporary files a finished extraction no longer needs."""
    folder = Path(folder)
    shutil.rmtree(folder / STATE_DIR, ignore_errors=True)
    for entry in folder.iterdir():
        if temporary_target(entry.name) and _is_own_name(entry.name, set()) and entry.is_file():
            entry.unlink(missing_ok=True)


def is_part_folder_name(name: str) -> bool:
    """``part-00012`` (committed) or ``.part-00012.partial`` (being extracted)."""
    core = name[1:-len(".partial")] if name.startswith(".") and name.endswith(".partial") else name
    return core.startswith("part-") and core[5:].isdigit()


def foreign_part_entries(out: str | Path) -> list[Path]:
    """Entries under ``out/parts/`` an extraction did not write (anything but part folders holding
    the extractor's own files), which a join must neither delete nor pass over."""
    parts = Path(out) / PARTS_DIR
    if not parts.is_dir():
        return []
    foreign = []
    for entry in sorted(parts.iterdir()):
        if entry.name == LOCK_FILE:
            continue
        if not (is_part_folder_name(entry.name) and entry.is_dir() and not entry.is_symlink()):
            foreign.append(entry)
            continue
        foreign += extraction_entries(entry)[1]
    return foreign


def refuse_foreign_part_entries(out: str | Path, *, option: str = "folder") -> None:
    """A one-line error naming the files under ``parts/`` sail-vision did not write, if any."""
    foreign = foreign_part_entries(out)
    if foreign:
        parts = Path(out) / PARTS_DIR
        names = listing(foreign, relative_to=parts)
        raise FeatureStoreError(f"{option} {out}: {PARTS_DIR}/ holds files sail-vision did not write ({names}); "
                                f"move them out of {parts}, then rerun; nothing was deleted")


def remove_parts(out: str | Path) -> None:
    """Remove ``parts/`` of a consolidated folder, refusing (nothing deleted) when it holds files
    sail-vision did not write. Safe to interrupt and repeat."""
    out = Path(out)
    parts = out / PARTS_DIR
    if not parts.exists():
        return
    refuse_foreign_part_entries(out)
    pause_point("extract:remove-parts")
    for entry in sorted(parts.iterdir()):
        shutil.rmtree(entry) if entry.is_dir() and not entry.is_symlink() else entry.unlink(missing_ok=True)
        pause_point("extract:removing-parts")
    parts.rmdir()
    fsync_dir(out)


def describe_bytes(n: float) -> str:
    """1234567 -> '1.2 MB'."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def check_free_space(folder: str | Path, needed: int, *, option: str = "--out", what: str = "the features") -> None:
    """Refuse to start when the disk of ``folder`` has less than ``needed`` bytes free."""
    folder = Path(folder)
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise FeatureStoreError(f"{option} {folder}: {what} need {describe_bytes(needed)} more but only "
                                f"{describe_bytes(free)} is free on that disk; free some space (then --resume), "
                                f"choose another {option}, or store less (fewer --layers / --pool, "
                                f"--save-dtype float16)")


def unallocated_bytes(path: str | Path) -> int:
    """Bytes of a (sparse) file not yet backed by disk blocks: what writing all of it still needs."""
    st = os.stat(path)
    return max(0, st.st_size - getattr(st, "st_blocks", 0) * 512)
