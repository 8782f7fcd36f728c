"""What every input source hands to extraction: ordered records, optionally grouped in shards.

A *source* lists the images of a dataset in a fixed order. Flat sources (a folder, an ImageNet
tree, ADE20K, a list file) know all their records up front and have no shards; the extraction
cuts them into parts of ``--part-size`` records. Sharded sources (WebDataset tar files, Parquet
files) are read shard by shard, and each shard is naturally one part. Sources only list and open
inputs; decoding is :func:`sail_vision.preprocessing.decode_image`'s job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Protocol, runtime_checkable


@dataclass(frozen=True)
class Record:
    """One input image.

    ``key`` names it stably (an absolute path, or ``<shard>#<member>`` inside a shard) and is what
    ``paths.txt`` and failure reports show. The image is either a file (``path``) or encoded bytes
    (``data``). ``mask`` is the segmentation label map (a path or encoded bytes) when the layout
    pairs images with masks. ``error`` is ``(kind, detail)`` when the record itself is unusable
    (say, a tar member without an image); such a record becomes a recorded failure.
    """

    key: str
    label: int | None = None
    path: str | None = None
    data: bytes | None = None
    mask: str | bytes | None = None
    error: tuple[str, str] | None = None

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
