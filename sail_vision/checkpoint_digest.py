"""The exact identity of a checkpoint's weights: a SHA-256 of every byte of every weight file.

``--resume`` and the probes compare it, so features from two different models can never end up in
one folder or one probe. Hashing a 7B checkpoint reads about 15 GB once; the digest of each file
is then cached (``$SAIL_VISION_CACHE_DIR``, else ``$XDG_CACHE_HOME/sail-vision``, else
``~/.cache/sail-vision``) under its path, size, inode, modification and change times, so any
rewrite of a file, even one that restores its modification time, is hashed again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable

CACHE_ENV = "SAIL_VISION_CACHE_DIR"
CACHE_FILE = "weights-digests.json"
_CHUNK = 16 << 20
_PROGRESS_MIN_BYTES = 512 << 20


def cache_dir() -> Path:
    """Where sail-vision keeps cached digests."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "sail-vision"


def _stat_key(path: Path) -> str:
    st = os.stat(path)
    return f"{path.resolve()}|{st.st_size}|{st.st_dev}|{st.st_ino}|{st.st_mtime_ns}|{st.st_ctime_ns}"


def _read_cache() -> dict:
    try:
        data = json.loads((cache_dir() / CACHE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(entries: dict) -> None:
    """Best effort: a cache that cannot be written only costs a re-hash next time."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{CACHE_FILE}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(entries, indent=0, sort_keys=True), encoding="utf-8")
        os.replace(tmp, folder / CACHE_FILE)
    except OSError:
        pass


def _hash_file(path: Path, bar) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            if bar is not None:
                bar.update(len(chunk))
    return digest.hexdigest()


def file_digests(files: Iterable[str | Path], *, progress: bool = False) -> dict[str, str]:
    """SHA-256 of each file (by resolved path), from the cache when the file is unchanged."""
    from .errors import CheckpointError

    files = sorted({Path(f).resolve() for f in files})
    cache = _read_cache()
    keys = {}
    for file in files:
        try:
            keys[file] = _stat_key(file)
        except OSError as exc:
            raise CheckpointError(f"{file}: cannot read the weights ({exc.strerror})") from None
    todo = [f for f in files if keys[f] not in cache]
    total = sum(f.stat().st_size for f in todo)
    bar = None
    if progress and total >= _PROGRESS_MIN_BYTES:
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, desc="hashing weights (once per file)",
                   dynamic_ncols=True)
    try:
        for file in todo:
            value = _hash_file(file, bar)
            if _stat_key(file) != keys[file]:
                raise CheckpointError(f"{file}: changed while it was being read; wait until it is fully "
                                      f"written (e.g. a download still running) and try again")
            cache[keys[file]] = value
    finally:
        if bar is not None:
            bar.close()
    if todo:  # keep the current entry of each file, drop entries of rewritten or deleted files
        current = set(keys.values())
        mine = {str(f) for f in files}
        _write_cache({k: v for k, v in cache.items() if k in current or
                      (k.split("|", 1)[0] not in mine and os.path.exists(k.split("|", 1)[0]))})
    return {str(f): cache[keys[f]] for f in files}


def weights_digest(checkpoint, *, progress: bool = False, files: Iterable[str | Path] | None = None) -> str:
    """The identity of a :class:`~sail_vision.checkpoint.SailCheckpoint`'s weights: a SHA-256 over the
    names and full-content digests of all its weight files, or of ``files`` (32 hex digits)."""
    files = sorted({Path(p) for p in (checkpoint.weight_map.values() if files is None else files)})
    digests = file_digests(files, progress=progress)
    combined = hashlib.sha256()
    for file in files:
        combined.update(f"{file.name}\0{digests[str(file.resolve())]}\n".encode())
    return combined.hexdigest()[:32]
