"""Contained paths: a file a dataset names (a Parquet row's image path) may only be read from inside
the dataset's own folder, or from a folder the user allows (``--allow-paths-under DIR``).

A downloaded Parquet file is data, not a command: a row whose image is ``/etc/passwd``,
``/proc/self/environ`` or ``../../secret.png`` must not make the extraction read that file. The
rule, applied to the path *after* following every symbolic link (``os.path.realpath``), so a link
inside the dataset that points outside it is refused too:

- a relative path is taken from the dataset's folder (the Parquet file's folder); ``~`` in a
  path written in the data is not expanded (it is a folder named ``~``);
- the real path must lie under the real dataset folder or under one of the allowed roots;
  anything else is the row's ``outside-dataset`` failure, naming the path and the option.

The real path is what is then opened and what ``paths.txt`` records for that row.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from ..errors import InputError

#: The failure kind of a row naming a file outside the dataset's folder and the allowed roots.
OUTSIDE = "outside-dataset"


def allowed_roots(roots: Sequence[str | Path] | None) -> tuple[str, ...]:
    """``--allow-paths-under`` folders as real absolute paths (``~`` expanded), in the order given;
    a one-line :class:`InputError` for one that is not a folder."""
    if isinstance(roots, (str, Path)):
        roots = [roots]
    real = []
    for root in roots or ():
        path = os.path.realpath(os.path.expanduser(os.fspath(root)))
        if not os.path.isdir(path):
            raise InputError(f"--allow-paths-under {root}: no such folder")
        real.append(path)
    return tuple(real)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def contained_path(name: str, folder: str, allowed: Sequence[str] = ()) -> tuple[str | None, tuple[str, str] | None]:
    """(the real path to open, None), or (None, (``outside-dataset``, why)) for a file named ``name``
    by a dataset in ``folder``; ``allowed`` are extra real roots (:func:`allowed_roots`)."""
    real = os.path.realpath(os.path.join(folder, name))
    base = os.path.realpath(folder)
    if _under(real, base) or any(_under(real, root) for root in allowed):
        return real, None
    return None, (OUTSIDE, f"the image path {name!r} leads to {real}, outside the dataset's folder {base}; "
                           f"pass --allow-paths-under DIR to allow reading from DIR")
