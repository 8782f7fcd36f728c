"""WebDataset tar shards as a source: one record per sample, streamed in tar order.

The ``webdataset`` library opens the shards (local paths, ``file:``, ``pipe:`` commands, the
URL schemes it knows) and names the members: a sample is a run of consecutive members sharing
the key before the first dot of the file name (``n01440764_10026.jpg`` and ``n01440764_10026.cls``
form sample ``n01440764_10026``); meta files named ``__...__`` are skipped. The tar itself is
read here with :mod:`tarfile`, member by member, so every problem is pinned to a sample:

- the image is the ``jpg``, ``jpeg``, ``png`` or ``webp`` member (first present, in that order);
  a sample without one is a record with error ``no-image``;
- the label is the ``cls`` member (an integer as text) or the ``label`` (else ``cls``) field of
  the ``json`` member; an unreadable label is ``bad-label``, a missing one in a labelled source
  ``no-label``; a label outside the classes (or negative, or >= 10^7) is ``bad-label``;
- class names come from a ``classes.txt`` beside the shards (line i = label i) when there is one;
- only image and label members are read, one at a time, each only when within its limit (an image
  :func:`.shards.max_image_bytes`, a label ``MAX_LABEL_BYTES``), else the sample is ``too-large``;
  every other member (``txt``, ``npy``, ...) is skipped unread, so no member's size matters;
- a tar that ends early (inside a sample, or without tar's end-of-archive marker) gives a
  ``truncated`` record for the sample it ends in; data after the end marker gives a ``corrupt``
  record; a shard that cannot be opened or is not a tar at all is an :class:`InputError`.

Memory stays bounded by one sample's image and label members (plus the set of keys of the current
shard, to report repeats).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from ..errors import InputError
from .base import Record, Shard
from .labels import CLASSES_FILE, label_info, label_problem, no_labels, parse_label_text, read_class_names
from .shards import TOO_LARGE, ShardedSource, check_local_shards, local_path, make_shards, require, too_large

#: Member extensions holding the image, in order of preference.
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
#: Member extensions holding the label; every other member is skipped without being read.
LABEL_MEMBERS = ("cls", "json")
#: The most bytes a label member may have (a label, or a sample's metadata, is far smaller).
MAX_LABEL_BYTES = 16 * 1024 * 1024
#: Meta files webdataset skips.
_META = re.compile(r"__[^/]*__($|/)")
#: Errors that mean "the stream ended early or is damaged".
_STREAM_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error, lzma.LZMAError)
_BLOCK = 512
_TAIL = 64 * 1024


class _Tracked:
    """A read-only stream that remembers how many bytes it gave and the last ones it gave."""

    def __init__(self, raw, url: str):
        self.raw, self.stream, self.url = raw, raw, url
        self.total = 0
        self.tail = bytearray()

    def read(self, size: int = -1) -> bytes:
        data = self.stream.read(size)
        self.total += len(data)
        self.tail += data
        del self.tail[:-_TAIL]
        return data

    def bytes_at(self, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size) of the stream, reading on if needed (b'' past the end)."""
        while self.total < offset + size:
            if not self.read(_TAIL):
                break
        start = offset - (self.total - len(self.tail))
        return bytes(self.tail[max(start, 0): max(start, 0) + size]) if start >= 0 else b""

    def why(self, exc: BaseException) -> str:
        """What went wrong, in words: a ``pipe:`` command's exit status when it failed, else ``exc``."""
        proc = getattr(self.raw, "proc", None)
        if proc is not None:
            try:
                status = proc.wait(timeout=2)  # at end of data it has exited or is exiting
            except Exception:
                status = None
            if status not in (None, 0, 141):
                return f"the command exited with status {status}"
        return str(exc)

    def close(self) -> None:
        try:
            self.stream.close()
        except Exception:  # a pipe's exit status; the data checks already judged the shard
            pass

    def __repr__(self) -> str:
        return self.url


class _Prefixed:
    """A stream with bytes already read from it put back in front."""

    def __init__(self, head: bytes, stream):
        self.head, self.stream = head, stream

    def read(self, size: int = -1) -> bytes:
        if self.head:
            data, self.head = (self.head, b"") if size < 0 or size >= len(self.head) else (
                self.head[:size], self.head[size:])
            return data
        return self.stream.read(size)

    def close(self) -> None:
        self.stream.close()


def _decompressed(raw):
    """Undo gzip / bzip2 / xz compression (seen from the first bytes), so offsets are tar offsets."""
    head = raw.read(6)
    stream = _Prefixed(head, raw)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if head[:3] == b"BZh":
        return bz2.BZ2File(stream)
    if head[:6] == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(stream)
    return stream


def _open(shard: Shard) -> _Tracked:
    gopen = require("webdataset.gopen", "WebDataset shards").gopen
    try:
        raw = gopen(shard.url, "rb")
    except OSError as exc:
        raise InputError(f"shard {shard.url}: cannot open ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise InputError(f"shard {shard.url}: cannot open ({exc})") from None
    tracked = _Tracked(raw, shard.url)
    try:
        tracked.stream = _decompressed(raw)
    except _STREAM_ERRORS as exc:
        tracked.close()
        raise InputError(f"shard {shard.url}: not a readable tar file ({tracked.why(exc)})") from None
    return tracked


def _split_name(name: str) -> tuple[str | None, str | None]:
    return require("webdataset.tariterators", "WebDataset shards").base_plus_ext(name)


# ---------------------------------------------------------------------------------- samples
def _samples(shard: Shard) -> Iterator[tuple[str, dict | None, tuple[str, str] | None]]:
    """(key, {extension: bytes}, problem) per sample, in tar order; a damaged end yields
    (key, None, ("truncated" | "corrupt", detail)) and stops."""
    stream = _open(shard)
    try:
        try:
            tar = tarfile.open(fileobj=stream, mode="r|")
        except _STREAM_ERRORS as exc:
            raise InputError(f"shard {shard.url}: not a readable tar file ({stream.why(exc)})") from None
        yield from _grouped(shard, tar, stream)
    finally:
        stream.close()


def _grouped(shard: Shard, tar: tarfile.TarFile, stream: _Tracked):
    key, members, problem = None, {}, None
    try:
        while (info := tar.next()) is not None:
            tar.members = []
            if not info.isreg() or _META.match(info.name):
                continue
            prefix, suffix = _split_name(info.name)
            if prefix is None:
                continue
            if prefix != key:
                if key is not None:
                    yield key, members, problem
                key, members, problem = prefix, {}, None
            suffix = suffix.lower()
            if suffix in members:
                problem = ("corrupt", f"two members named {prefix}.{suffix}")
            members[suffix], too_big = _member(tar, info, suffix)
            problem = problem or too_big
    except _STREAM_ERRORS as exc:
        yield (key or "<start>"), None, ("truncated", f"the shard ends early in or after this sample "
                                                      f"({stream.why(exc)}); later samples of the shard are lost")
        return
    end = _end_problem(tar, stream)
    if key is not None:
        yield (key, members, problem) if end is None or end[0] == "corrupt" else (key, None, end)
    if end is not None and end[0] == "corrupt":
        yield "<end>", None, end


def _member(tar: tarfile.TarFile, info: tarfile.TarInfo, suffix: str) -> tuple[bytes | None, tuple | None]:
    """(bytes, None) for a member this source uses (an image or a label) within its size limit;
    (None, None) for any other member, skipped without being read; (None, ("too-large", why)) for
    a used member over its limit, also not read."""
    if suffix in IMAGE_MEMBERS:
        problem = too_large(info.size, f"{suffix} member")
    elif suffix in LABEL_MEMBERS:
        problem = None if info.size <= MAX_LABEL_BYTES else (TOO_LARGE, (
            f"the {suffix} member is {info.size:,} bytes, more than the {MAX_LABEL_BYTES:,} a label member may "
            f"have; not read"))
    else:
        return None, None
    return (None, problem) if problem else (tar.extractfile(info).read(), None)


def _end_problem(tar: tarfile.TarFile, stream: _Tracked) -> tuple[str, str] | None:
    """None when the tar ends with its end-of-archive marker and nothing but zeros follows."""
    block = stream.bytes_at(tar.offset, _BLOCK)
    if len(block) < _BLOCK or block.count(0) != _BLOCK:
        return "truncated", ("no valid tar header nor end-of-archive marker after this sample (the shard is cut "
                             "off or damaged): this sample may be incomplete and later ones are lost")
    while chunk := stream.read(_TAIL):
        if chunk.count(0) != len(chunk):
            return "corrupt", ("data after the tar end-of-archive marker (concatenated tar files?) was not read; "
                               "split it into separate shards")
    return None


# ---------------------------------------------------------------------------------- labels
def _label_of(members: dict) -> tuple[int | None, str | None]:
    """(label, None), (None, None) when there is none, or (None, why) when it cannot be read."""
    if members.get("cls") is not None:
        text = members["cls"].decode("ascii", "replace")
        value = parse_label_text(text)
        return (value, None) if value is not None else (None, f"cls member {text.strip()[:40]!r} is not an integer")
    if members.get("json") is not None:
        try:
            meta = json.loads(members["json"])
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return None, f"json member is not JSON ({exc})"
        if isinstance(meta, dict):
            value = meta.get("label", meta.get("cls"))
            if value is not None:
                problem = label_problem(value)
                return (value, None) if problem is None else (None, f"json label: {problem}")
    return None, None


def _has_label(members: dict | None) -> bool:
    if not members:
        return False
    if "cls" in members and members["cls"] is None:  # too large to read, but a label member
        return True
    label, why = _label_of(members)
    return label is not None or why is not None


@dataclass
class WebDatasetSource(ShardedSource):
    """WebDataset shards; ``labelled`` says whether samples carry labels (decided from the first
    sample of the first shard; every sample must then agree)."""

    labelled: bool = False

    def _read(self, shard: Shard) -> Iterator[Record]:
        seen: set[str] = set()
        for key, members, problem in _samples(shard):
            record_key = f"{shard.name}#{key}"
            if problem is None and key in seen:
                problem = ("duplicate", f"sample key {key!r} appears twice in {shard.name}")
            seen.add(key)
            yield self._record(shard, record_key, members, problem)

    def _record(self, shard: Shard, key: str, members: dict | None, problem) -> Record:
        if problem is not None:
            return Record(key=key, error=problem)
        label, why = _label_of(members)
        if why is not None:
            return Record(key=key, error=("bad-label", why))
        if label is not None and not self.labelled:
            raise InputError(f"shard {shard.url}: sample {key} has a label but the first sample of this source has "
                             f"none; labelled and unlabelled shards cannot be mixed")
        if label is None and self.labelled:
            return Record(key=key, error=("no-label", "no cls member and no label in json, while the source is "
                                                      "labelled"))
        if label is not None and (problem := label_problem(label, None if self.classes is None else
                                                                   len(self.classes))):
            return Record(key=key, error=("bad-label", problem))
        image = next((members[e] for e in IMAGE_MEMBERS if members.get(e) is not None), None)
        if image is None:
            return Record(key=key, label=label, error=("no-image", f"no {'/'.join(IMAGE_MEMBERS)} member "
                                                                   f"(members: {', '.join(sorted(members))})"))
        return Record(key=key, label=label, data=image)


def _class_names(urls: list[str]) -> tuple[list[str] | None, str | None]:
    """Class names from the ``classes.txt`` beside the local shards (all folders must agree)."""
    folders = sorted({os.path.dirname(os.path.abspath(p)) for p in map(local_path, urls) if p is not None})
    found = {folder: Path(folder) / CLASSES_FILE for folder in folders if (Path(folder) / CLASSES_FILE).is_file()}
    if not found:
        return None, None
    missing = [f for f in folders if f not in found]
    if missing:
        raise InputError(f"{missing[0]}: has no {CLASSES_FILE} while {next(iter(found.values()))} names the "
                         f"classes; shards with different label sets cannot be mixed")
    files = list(found.values())
    names = read_class_names(files[0])
    for other in files[1:]:
        if read_class_names(other) != names:
            raise InputError(f"{other}: names other classes than {files[0]}; shards with different label sets "
                             f"cannot be mixed")
    return names, str(files[0])


def open_webdataset(urls: list[str], spec: str) -> WebDatasetSource:
    """A :class:`WebDatasetSource` over ``urls`` (``spec`` is what the user wrote, for the record)."""
    require("webdataset", "WebDataset shards")
    check_local_shards(urls)
    shards = make_shards(urls)
    classes, classes_file = _class_names(urls)
    samples = _samples(shards[0])
    first = next(samples, None)
    samples.close()
    labelled = first is not None and _has_label(first[1])
    if labelled:
        how = "shard-cls" if "cls" in first[1] else "shard-json"
        info = label_info(how, labelled=None, rows=None, classes=classes, names_from=classes_file,
                          why=None if classes else f"no {CLASSES_FILE} beside the shards")
    else:
        info = no_labels("the first sample has no cls member and no label in json", None)
    return WebDatasetSource("webdataset", shards, classes,
                            {"images": spec, "shards": [s.url for s in shards], "labels": info,
                             "classes_file": classes_file}, labelled=labelled)
