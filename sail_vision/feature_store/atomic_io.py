"""The only way sail-vision replaces a file: through a temporary file in the same folder, fsync and
an atomic rename, so that readers (and a crash at any moment) see the old or the new file, never a mix.

Temporary files are named ``.{name}.{random}.tmp``; :func:`temporary_target` recognises them, so a
crash's leftovers can be told apart from a user's files and removed.
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import numpy as np

from ..pause_points import pause_point

_TMP_RE = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")


def temporary_target(name: str) -> str | None:
    """The file a temporary name of :func:`atomic_file` stands for (``.x.npy.ab12.tmp`` -> ``x.npy``), else None."""
    match = _TMP_RE.match(name)
    return match.group("name") if match else None


def fsync_dir(directory: str | Path) -> None:
    """Make a folder's entries (renames, new and removed files) durable; a no-op where folders cannot be synced."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _default_file_mode() -> int:
    """0o666 minus the process umask: the mode ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """``with atomic_file(path) as tmp:`` fill ``tmp`` (an empty file beside ``path``; it may be
    replaced, e.g. by a hard link); on a normal exit it is synced and renamed to ``path``, on an
    error removed."""
    path = Path(path)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, _default_file_mode())
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        pause_point(f"atomic-write:{path.name}")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> None:
    """Atomically write a file whose bytes ``write(handle)`` produces."""
    with atomic_file(path) as tmp, open(tmp, "wb") as handle:
        write(handle)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Atomically write a UTF-8 text file."""
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def atomic_save_npy(path: str | Path, array: np.ndarray) -> None:
    """Atomically write an array as ``.npy``."""
    atomic_write(path, lambda handle: np.save(handle, np.ascontiguousarray(array), allow_pickle=False))
