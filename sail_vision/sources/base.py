"""What every input source hands to extraction: ordered records, optionally grouped in shards.

A *source* lists the images of a dataset in a fixed order. Flat sources (a folder, an ImageNet
tree, ADE20K, a list file) know all their records up front and have no shards; the extraction
cuts them into parts of ``--part-size`` records. Sharded sources (WebDataset tar files, Parquet
files) are read shard by shard, and each shard is naturally one part. Sources only list and open
inputs; decoding is :func:`sail_vision.preprocessing.decode_image`'s job.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterator, Protocol, runtime_checkable

#: Characters a row's name cannot hold: every line break ``str.splitlines`` honours, and NUL.
_NOT_IN_A_LINE = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029\x00]")
#: Lone surrogates (undecodable bytes of a file or tar member name): not writable as UTF-8.
_UNENCODABLE = re.compile("[\ud800-\udfff]")
_ASCII_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x00"
_OTHER_BREAKS = "\x85\u2028\u2029"
#: The failure kind of a row whose name cannot be one line of ``paths.txt``.
BAD_NAME = "bad-name"


def _escaped(char: re.Match) -> str:
    return repr(char.group())[1:-1]


def name_problem(name: str) -> tuple[str, tuple[str, str]] | None:
    """None when ``name`` can be one UTF-8 line of ``paths.txt``; else (a one-line stand-in for it,
    the row's ``(kind, detail)`` failure). The stand-in spells each offending character as Python
    escapes it (a newline as the two characters ``\\n``). Every row name (a :class:`Record` key,
    an :class:`~.files.ImageSource` path or mask) passes this one check."""
    if _fits_a_line(name):
        return None
    line = _UNENCODABLE.sub(_escaped, _NOT_IN_A_LINE.sub(_escaped, name))
    return line, (BAD_NAME, f"the name holds a line break, NUL or undecodable byte, which paths.txt (one line per "
                            f"row) cannot hold; shown here escaped; rename it")


def _fits_a_line(text: str) -> bool:
    """No character of ``_NOT_IN_A_LINE`` and nothing ``_UNENCODABLE`` in ``text`` (fast substring
    tests: this runs over every path of a dataset)."""
    if any(char in text for char in _ASCII_BREAKS):
        return False
    if text.isascii():
        return True
    if any(char in text for char in _OTHER_BREAKS):
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def rows_without_one_line(names, chunk: int = 1000) -> list[int]:
    """The indices of the names that need :func:`name_problem` (``chunk`` names checked at once, one
    by one only in a chunk that holds such a name)."""
    names = list(names)
    rows = []
    for start in range(0, len(names), chunk):
        part = names[start:start + chunk]
        if not _fits_a_line("".join(part)):
            rows.extend(start + i for i, name in enumerate(part) if not _fits_a_line(name))
    return rows


@dataclass(frozen=True)
class Record:
    """One input image.

    ``key`` names it stably (an absolute path, or ``<shard>#<member>`` inside a shard) and is what
    ``paths.txt`` and failure reports show. The image is either a file (``path``) or encoded bytes
    (``data``). ``mask`` is the segmentation label map (a path or encoded bytes) when the layout
    pairs images with masks. ``error`` is ``(kind, detail)`` when the record itself is unusable
    (say, a tar member without an image); such a record becomes a recorded failure. A key that
    cannot be one line of ``paths.txt`` (see :func:`name_problem`) is replaced by its escaped
    stand-in and the record becomes a ``bad-name`` failure, its image dropped.
    """

    key: str
    label: int | None = None
    path: str | None = None
    data: bytes | None = None
    mask: str | bytes | None = None
    error: tuple[str, str] | None = None

    def __post_init__(self):
        problem = name_problem(self.key)
        if problem is not None:
            for name, value in (("key", problem[0]), ("error", problem[1]), ("label", None), ("path", None),
                                ("data", None), ("mask", None)):
                object.__setattr__(self, name, value)

    @property
    def image(self) -> str | bytes | None:
        """What to pass to ``decode_image``: the bytes, else the path."""
        return self.data if self.data is not None else self.path


@dataclass(frozen=True)
class Shard:
    """One input shard: ``name`` is stable and unique within the source (used in part names and
    messages); ``url`` is where it is read from (a path or a ``pipe:`` command)."""

    name: str
    url: str


@runtime_checkable
class Source(Protocol):
    """An ordered dataset of images. ``description`` is JSON and identifies the inputs (it is part
    of what a resumed run must match); ``classes`` are the class names, index = label."""

    layout: str
    classes: list[str] | None
    description: dict

    @property
    def shards(self) -> list[Shard] | None:
        """The shards in order, or None for a flat source."""

    def records(self, shard: Shard | None = None) -> Iterator[Record]:
        """The records of one shard (sharded sources) or of the whole source (flat sources), in order."""
