"""One writer per output folder: an exclusive, self-describing lock held for a whole run.

Every sail-vision command that writes a folder (``extract``, ``probe``, ``tools/train.py``) holds
:func:`hold_folder` on it. A second writer is refused at once with a message naming the holder
(host, pid, command, since when). The lock is a ``flock`` on a small file in the folder, so the
kernel releases it when the holder dies, however it dies: a stale lock is simply taken over. The
file is removed when the run ends (the path is re-checked after locking, so removing it is safe).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import SailVisionError

#: The lock file every sail-vision writer uses in the folder it writes.
LOCK_FILE = ".sail-vision.lock"


class FolderInUseError(SailVisionError):
    """Another process is writing the folder (or it cannot be locked at all)."""


class _Busy(FolderInUseError):
    """Another live process holds the lock (the one case worth waiting for)."""


#: Lock descriptors held by this process; a forked child (e.g. a DataLoader worker) drops its copies
#: at once, so the lock dies with its holder even while orphaned workers linger.
_HELD: set[int] = set()


def _drop_inherited_locks() -> None:
    if not _HELD:
        return
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        for fd in _HELD:
            os.dup2(null, fd)  # the child's descriptor no longer refers to the locked file
    finally:
        os.close(null)
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


def _holder_text(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        return (f"pid {info['pid']} on {info['host']}, running {info.get('command', '?')!r} "
                f"since {info['since']}")
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _describe_self(what: str) -> str:
    return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": what,
                       "argv": " ".join(sys.argv)[:300], "since": time.strftime("%Y-%m-%d %H:%M:%S %z")})


def _acquire(folder: Path, path: Path, option: str) -> int:
    import fcntl

    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as exc:
            raise FolderInUseError(f"{option} {folder}: cannot write there ({exc.strerror}); choose a writable "
                                   f"folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _Busy(f"{option} {folder}: another sail-vision run is writing there "
                                   f"({_holder_text(path)}); wait for it to finish, or choose another "
                                   f"{option}") from None
        except OSError as exc:
            os.close(fd)
            raise FolderInUseError(f"{option} {folder}: cannot lock {path.name} ({exc.strerror}); use a local "
                                   f"or lock-capable file system") from None
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # the previous holder removed the file between our open and our lock: retry


@contextmanager
def hold_folder(folder: str | Path, what: str, *, option: str = "--out",
                lock_name: str = LOCK_FILE, wait: float = 0) -> Iterator[Path]:
    """Create ``folder`` if needed and hold its exclusive lock until the block ends.

    ``what`` names this run in the holder record ("sail-vision extract"); ``option`` is how the
    user named the folder, for messages. Raises :class:`FolderInUseError` when another live process
    holds the lock (after waiting up to ``wait`` seconds for it to let go), and for a folder that
    cannot be created or written.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise FolderInUseError(f"{option} {folder}: exists and is not a folder; choose a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FolderInUseError(f"{option} {folder}: cannot create the folder ({exc.strerror}); choose another "
                               f"{option}") from None
    path = folder / lock_name
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = _acquire(folder, path, option)
            break
        except _Busy:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
    owner = os.getpid()
    _HELD.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, _describe_self(what).encode(), 0)
        yield folder
    finally:
        if os.getpid() == owner:  # never in a forked child: the lock is its parent's
            _HELD.discard(fd)
            try:
                path.unlink(missing_ok=True)
            finally:
                os.close(fd)  # closing the last descriptor releases the lock
