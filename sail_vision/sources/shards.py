"""What WebDataset and Parquet sources share: shard lists, shard names, ``--limit``, and the
optional libraries they need.

A shard spec is spelled as the ``webdataset`` library spells it: brace ranges and lists
(``train-{000000..000146}.tar``, ``{a,b}.parquet``), several specs joined by ``::``, local paths,
``file:`` URLs and ``pipe:`` commands (WebDataset only).
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field, replace
from typing import Iterator

from PIL import Image

from ..errors import InputError
from ..preprocessing import DEFAULT_MAX_PIXELS
from .base import Record, Shard

#: Name endings of shard files, and the layout each one means.
SHARD_SUFFIXES = {".tar": "webdataset", ".tar.gz": "webdataset", ".tgz": "webdataset", ".tar.bz2": "webdataset",
                  ".tar.xz": "webdataset", ".parquet": "parquet"}
#: The pip extra that installs the libraries sharded inputs need.
EXTRA = "sail-vision[shards]"
#: Bytes per pixel of the largest image encoding read whole: 8-bit RGBA, stored uncompressed.
BYTES_PER_PIXEL = 4
#: The failure kind of an image (tar member or Parquet bytes) larger than :func:`max_image_bytes`.
TOO_LARGE = "too-large"


def max_image_bytes() -> int:
    """The most bytes one encoded image of a shard may have: ``BYTES_PER_PIXEL`` x Pillow's
    decompression-bomb guard ``Image.MAX_IMAGE_PIXELS`` (89,478,485 pixels unless changed; its default
    when someone set it to None) = 357,913,940 bytes by default. An image with more pixels than the
    guard is refused when decoded (``--max-pixels``, same default), and an encoded image is at most
    its uncompressed 8-bit RGBA pixels plus a little, so a larger member cannot be a usable image;
    it is never read into memory."""
    return BYTES_PER_PIXEL * (Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS)


def too_large(size: int, what: str = "image") -> tuple[str, str] | None:
    """``("too-large", why)`` when an encoded image of ``size`` bytes exceeds :func:`max_image_bytes`."""
    limit = max_image_bytes()
    if size <= limit:
        return None
    return TOO_LARGE, (f"the {what} is {size:,} bytes, more than the {limit:,} an image within the "
                       f"decompression-bomb limit can take ({BYTES_PER_PIXEL} x Image.MAX_IMAGE_PIXELS); not read")


def require(module: str, what: str):
    """Import an optional library, or a one-line :class:`InputError` saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InputError(f"reading {what} needs the '{module}' library: pip install '{EXTRA}'") from None


def _suffix_of(name: str) -> str | None:
    lower = name.lower()
    return next((s for s in sorted(SHARD_SUFFIXES, key=len, reverse=True) if lower.endswith(s)), None)


def _shard_target(url: str) -> str:
    """The path part of a shard URL: for ``pipe:`` commands, the last word naming a shard file."""
    if not url.startswith("pipe:"):
        return url
    words = [w.strip("'\";") for w in url[5:].split()]
    return next((w for w in reversed(words) if _suffix_of(w)), words[-1] if words else "")


def shard_suffix(url: str) -> str | None:
    """The shard suffix a path (or the shard file a ``pipe:`` command reads) ends with, or None."""
    return _suffix_of(_shard_target(url))


def shard_layout(url: str) -> str | None:
    """'webdataset' / 'parquet' for a shard path or command, else None (``pipe:`` means WebDataset)."""
    suffix = shard_suffix(url)
    if suffix is not None:
        return SHARD_SUFFIXES[suffix]
    return "webdataset" if url.startswith("pipe:") else None


def looks_like_shard_spec(text: str) -> bool:
    """True when ``--images`` is a shard spec rather than a folder or list file."""
    return (text.startswith("pipe:") or "::" in text or bool(re.search(r"\{[^{}]*(\.\.|,)[^{}]*\}", text))
            or shard_suffix(text) is not None)


def expand_spec(spec: str) -> list[str]:
    """Shard URLs of a spec: ``::``-separated parts, each brace-expanded, in order."""
    braceexpand = require("braceexpand", "shard lists")
    urls = []
    for part in spec.split("::"):
        if part:
            urls.extend(braceexpand.braceexpand(part))
    if not urls:
        raise InputError(f"--images {spec!r}: names no shards")
    return urls


def local_path(url: str) -> str | None:
    """The file a shard URL names on this machine (None for ``pipe:`` commands and remote URLs)."""
    if url.startswith("file:"):
        return re.sub(r"^file:(//)?", "", url)
    if url.startswith("pipe:") or re.match(r"^[a-z][a-z0-9+.-]*://", url):
        return None
    return url


def check_local_shards(urls: list[str]) -> None:
    """Every local shard exists and is a file: else a one-line error naming the first that is not."""
    for url in urls:
        path = local_path(url)
        if path is not None and not os.path.isfile(path):
            reason = "is a folder" if os.path.isdir(path) else "no such file"
            raise InputError(f"shard {url}: {reason}")


def shard_names(urls: list[str]) -> list[str]:
    """Stable, unique, file-name-safe names: the file name without its shard suffix, or
    ``<index>-<name>`` for every shard when two would share a name."""
    bases = []
    for url in urls:
        base = os.path.basename(_shard_target(url).rstrip("/"))
        suffix = shard_suffix(base)
        base = base[: -len(suffix)] if suffix else base
        bases.append(re.sub(r"[^A-Za-z0-9._-]", "_", base) or "shard")
    if len(set(bases)) == len(bases):
        return bases
    width = len(str(len(urls) - 1))
    return [f"{i:0{width}d}-{base}" for i, base in enumerate(bases)]


def make_shards(urls: list[str]) -> list[Shard]:
    return [Shard(name, url) for name, url in zip(shard_names(urls), urls)]


@dataclass
class ShardedSource:
    """Records read shard by shard (subclasses read one shard in :meth:`_read`).

    ``limit`` keeps the first ``limit`` records of the whole source: ``shards`` then lists only
    the shards that hold them (counting the records of earlier shards, once).
    """

    layout: str
    shard_list: list[Shard]
    classes: list[str] | None
    description: dict
    limit: int | None = None
    _counts: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def shards(self) -> list[Shard]:
        if self.limit is None:
            return list(self.shard_list)
        kept, total = [], 0
        for shard in self.shard_list:
            if total >= self.limit:
                break
            kept.append(shard)
            total += self.count(shard)
        return kept

    def records(self, shard: Shard | None = None) -> Iterator[Record]:
        """The records of ``shard`` in order (of every shard, in order, when None)."""
        if shard is None:
            return itertools.chain.from_iterable(self.records(s) for s in self.shards)
        if shard not in self.shard_list:
            raise InputError(f"{shard.name}: not a shard of this {self.layout} source")
        if self.limit is None:
            return self._read(shard)
        before = self.shard_list.index(shard)
        remaining = self.limit - sum(self.count(s) for s in self.shard_list[:before])
        return itertools.islice(self._read(shard), max(remaining, 0))

    def count(self, shard: Shard) -> int:
        """How many records ``shard`` holds (read once, then remembered)."""
        if shard.name not in self._counts:
            self._counts[shard.name] = self._count(shard)
        return self._counts[shard.name]

    def limited(self, limit: int | None) -> "ShardedSource":
        """The first ``limit`` records (all of them when limit is None)."""
        if limit is None:
            return self
        if limit <= 0:
            raise InputError(f"--limit must be positive, got {limit}")
        return replace(self, limit=limit, description={**self.description, "limit": limit})

    def _read(self, shard: Shard) -> Iterator[Record]:
        raise NotImplementedError

    def _count(self, shard: Shard) -> int:
        return sum(1 for _ in self._read(shard))
