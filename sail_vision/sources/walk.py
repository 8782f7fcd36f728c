"""Walking a folder tree: every real folder once, problems recorded instead of dropped.

Rules (docs/inputs.md, "Walking folders"):
- Entries are visited in name order, depth first, so files come out sorted by their relative
  path's components (``a.jpg`` < ``m/e.png`` < ``m.png``). Names starting with ``.`` are skipped.
- Symbolic links are followed, but each *real* folder (device, inode) is listed once, at its first
  place in that order: a link loop, or two links to one folder, cannot repeat rows.
- Files are listed by path: a linked file and its target (or two hard links) are two rows, like
  two copies would be. The extraction reports repeated *paths* as duplicates.
- A folder that cannot be listed, a broken link with an image name, and a non-regular file with an
  image name (FIFO, socket, device) become :class:`Found` entries with an error, so they are
  recorded as failures (kinds ``unreadable``, ``missing``, ``not-image``), never silently dropped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import InputError


@dataclass(frozen=True)
class Found:
    """One listed file (absolute path), or a problem found while listing (``error = (kind, detail)``)."""

    path: str
    error: tuple[str, str] | None = None


@dataclass
class Listing:
    """The result of :func:`walk_files`."""

    found: list[Found] = field(default_factory=list)
    #: Folders reached a second time through a link, not listed again (absolute paths, in order).
    repeated_folders: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {"repeated_folders_skipped": len(self.repeated_folders),
                "examples": self.repeated_folders[:5]}


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _entry_problem(entry: os.DirEntry) -> tuple[str, str] | None:
    """Why a file-named entry cannot be an input (None for a regular file or a link to one)."""
    if entry.is_file():
        return None
    if entry.is_symlink() and not os.path.exists(entry.path):
        return "missing", f"broken symbolic link (to {os.readlink(entry.path)})"
    return "not-image", "not a regular file (a FIFO, socket or device)"


def walk_files(root: str | Path, accept: Callable[[str], bool]) -> Listing:
    """Every file under ``root`` whose name passes ``accept``, in sorted relative-path order (rules above).

    ``root`` itself must be a listable folder (else :class:`InputError`).
    """
    root = os.path.abspath(os.fspath(root))
    listing = Listing()
    seen: set[tuple[int, int]] = set()
    try:
        entries = _list_once(root, seen)
    except OSError as exc:
        raise InputError(f"{root}: cannot list this folder ({exc.strerror or exc})") from None
    stack = [iter(entries or [])]
    while stack:
        entry = next(stack[-1], None)
        if entry is None:
            stack.pop()
        elif _is_hidden(entry.name):
            continue
        elif entry.is_dir():
            try:
                children = _list_once(entry.path, seen)
            except OSError as exc:
                listing.found.append(Found(entry.path, ("unreadable",
                                                        f"cannot list folder ({exc.strerror or exc})")))
                continue
            if children is None:
                listing.repeated_folders.append(entry.path)
            else:
                stack.append(iter(children))
        elif accept(entry.name):
            listing.found.append(Found(entry.path, _entry_problem(entry)))
    return listing


def _list_once(folder: str, seen: set) -> list[os.DirEntry] | None:
    """The entries of ``folder`` sorted by name, or None when this real folder was listed before."""
    info = os.stat(folder)
    identity = (info.st_dev, info.st_ino)
    if identity in seen:
        return None
    seen.add(identity)
    with os.scandir(folder) as scan:
        return sorted(scan, key=lambda e: e.name)


def subfolders(root: str | Path) -> list[str]:
    """Names of the non-hidden folders (or links to folders) directly in ``root``, sorted."""
    try:
        with os.scandir(root) as scan:
            return sorted(e.name for e in scan if not _is_hidden(e.name) and e.is_dir())
    except OSError as exc:
        raise InputError(f"{root}: cannot list this folder ({exc.strerror or exc})") from None
