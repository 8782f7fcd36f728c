"""Parquet files as Hugging Face ``datasets`` writes them, as a source: one record per row.

Read with ``pyarrow``, a batch of rows at a time (memory bounded by one row group):

- the image column is the one the embedded ``huggingface`` schema metadata types ``Image`` (``image``
  when several are), else a column named ``image`` or ``img``; it holds ``{bytes, path}`` structs
  (or plain bytes). Bytes are decoded as they are (``<shard>#<row>`` names the row); a row with
  only a path reads that file if it lies inside the Parquet file's folder or an allowed root
  (:mod:`.containment`; else an ``outside-dataset`` record), and its real path names the row; bytes
  larger than the member limit (:data:`.webdataset.MAX_IMAGE_BYTES`) are a ``too-large`` record; a
  row with neither bytes nor a path is a ``no-image`` record;
- the label column is the ``ClassLabel`` column (``label`` when several are), else an integer
  column named ``label``; class names are the ``ClassLabel`` names. A null label in a labelled
  file is ``no-label``; a negative one (Hugging Face writes -1 for unlabelled rows, e.g. test
  splits) or one outside the classes is ``bad-label``;
- every file must have the same image column, label column and class names (else an
  :class:`InputError` naming both files); a file that is not Parquet, or has no image column, is
  an :class:`InputError` naming it. Rows that cannot be read give a ``corrupt`` record and end
  the shard.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterator

from ..errors import InputError
from .base import Record, Shard, name_problem
from .containment import contained_path
from .labels import label_info, label_problem, no_labels
from .shards import ShardedSource, check_local_shards, local_path, make_shards, require, too_large

IMAGE_COLUMNS = ("image", "img")
LABEL_COLUMN = "label"
#: Rows per batch read from a Parquet file.
BATCH_ROWS = 64


@dataclass(frozen=True)
class ParquetSchema:
    """What one Parquet file holds, as far as sail-vision reads it."""

    image: str
    label: str | None
    classes: tuple[str, ...] | None
    why_no_label: str | None


def _pyarrow_parquet():
    require("pyarrow", "Parquet files")
    import pyarrow.parquet as pq

    return pq


def _hf_features(schema) -> dict:
    """The ``datasets`` features stored in the schema metadata ({} when absent or unreadable)."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return {}
    try:
        meta = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {}
    features = (meta.get("info") or meta).get("features") if isinstance(meta, dict) else None
    return features if isinstance(features, dict) else {}


def _typed(features: dict, kind: str) -> list[str]:
    return [name for name, f in features.items() if isinstance(f, dict) and f.get("_type") == kind]


def _image_column(path: str, names: list[str], features: dict) -> str:
    typed = [c for c in _typed(features, "Image") if c in names]
    if len(typed) == 1:
        return typed[0]
    candidates = [c for c in IMAGE_COLUMNS if c in (typed or names)]
    if candidates:
        return candidates[0]
    if typed:
        raise InputError(f"{path}: several image columns ({', '.join(typed)}) and none named image; keep one")
    raise InputError(f"{path}: no image column (columns: {', '.join(names)}); expected an 'image' column of "
                     f"{{bytes, path}} structs, as Hugging Face datasets writes")


def _label_column(names: list[str], schema, features: dict) -> tuple[str | None, tuple | None, str | None]:
    """(column, class names, why there is no label)."""
    typed = [c for c in _typed(features, "ClassLabel") if c in names]
    if typed:
        column = LABEL_COLUMN if LABEL_COLUMN in typed else (typed[0] if len(typed) == 1 else None)
        if column is None:
            return None, None, f"several ClassLabel columns ({', '.join(typed)}), none named label"
        return column, tuple(features[column].get("names") or ()) or None, None
    if LABEL_COLUMN in names:
        import pyarrow.types as pat

        if pat.is_integer(schema.field(LABEL_COLUMN).type):
            return LABEL_COLUMN, None, None
        return None, None, f"column label is {schema.field(LABEL_COLUMN).type}, not integers"
    return None, None, "no label column"


def read_schema(path: str) -> ParquetSchema:
    """The :class:`ParquetSchema` of one file (an :class:`InputError` naming it if unusable)."""
    pq = _pyarrow_parquet()
    try:
        schema = pq.read_schema(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
    features = _hf_features(schema)
    names = list(schema.names)
    image = _image_column(path, names, features)
    label, classes, why = _label_column(names, schema, features)
    return ParquetSchema(image, label, classes, why)


def _same_schema(urls: list[str], schemas: list[ParquetSchema]) -> ParquetSchema:
    first = schemas[0]
    for url, schema in zip(urls[1:], schemas[1:]):
        if schema != first:
            what = ("its image column differs" if schema.image != first.image else "its label column differs"
                    if schema.label != first.label else "its class names differ")
            raise InputError(f"{url}: {what} from {urls[0]}'s; Parquet files with different label sets or "
                             f"columns cannot be mixed")
    return first


@dataclass
class ParquetSource(ShardedSource):
    """Parquet files, one shard each."""

    schema: ParquetSchema | None = None
    #: Real folders (besides each file's own) that image paths may lead into (``--allow-paths-under``).
    allowed: tuple[str, ...] = ()

    @property
    def labelled(self) -> bool:
        """Whether rows carry labels (the files have a label column)."""
        return self.schema is not None and self.schema.label is not None

    def _count(self, shard: Shard) -> int:
        return _pyarrow_parquet().ParquetFile(local_path(shard.url)).metadata.num_rows

    def _read(self, shard: Shard) -> Iterator[Record]:
        pq = _pyarrow_parquet()
        path = local_path(shard.url)
        try:
            handle = pq.ParquetFile(path)
        except (OSError, ValueError) as exc:
            raise InputError(f"{path}: not a readable Parquet file ({exc})") from None
        columns = [self.schema.image] + ([self.schema.label] if self.schema.label else [])
        row = 0
        with handle:
            batches = handle.iter_batches(batch_size=BATCH_ROWS, columns=columns)
            while True:
                try:
                    batch = next(batches, None)
                except (OSError, ValueError) as exc:
                    yield Record(key=f"{shard.name}#{row}", error=("corrupt", f"cannot read rows from {row} on "
                                                                              f"({exc}); the rest of the file is lost"))
                    return
                if batch is None:
                    return
                images = batch.column(self.schema.image).to_pylist()
                labels = batch.column(self.schema.label).to_pylist() if self.schema.label else [None] * len(images)
                for image, label in zip(images, labels):
                    yield self._record(f"{shard.name}#{row}", image, label, os.path.dirname(path))
                    row += 1

    def _record(self, key: str, image, label, folder: str) -> Record:
        if self.schema.label is not None:
            if label is None:
                return Record(key=key, error=("no-label", f"null {self.schema.label} in a labelled file"))
            classes = None if self.schema.classes is None else len(self.schema.classes)
            if problem := label_problem(label, classes):
                hint = " (Hugging Face writes -1 for unlabelled rows, e.g. a test split)" if label == -1 else ""
                return Record(key=key, error=("bad-label", problem + hint))
        data = image.get("bytes") if isinstance(image, dict) else image
        if data:
            if problem := too_large(len(data)):
                return Record(key=key, label=label, error=problem)
            return Record(key=key, label=label, data=bytes(data))
        file = image.get("path") if isinstance(image, dict) else None
        if file:
            if name_problem(file) is not None:
                return Record(key=os.path.join(folder, file))  # a bad-name record
            real, problem = contained_path(file, folder, self.allowed)
            return Record(key=key, label=label, error=problem) if problem else Record(key=real, label=label, path=real)
        return Record(key=key, label=label, error=("no-image", f"{self.schema.image} holds neither bytes nor a path"))


def open_parquet(urls: list[str], spec: str, allowed: tuple[str, ...] = ()) -> ParquetSource:
    """A :class:`ParquetSource` over local Parquet files (``spec`` is what the user wrote; ``allowed``:
    real folders image paths may lead into besides the files' own, see :mod:`.containment`)."""
    remote = [u for u in urls if local_path(u) is None]
    if remote:
        raise InputError(f"shard {remote[0]}: Parquet files must be local paths (pipe: and URLs are for "
                         f"WebDataset tar shards)")
    check_local_shards(urls)
    schema = _same_schema(urls, [read_schema(local_path(u)) for u in urls])
    classes = list(schema.classes) if schema.classes else None
    if schema.label is None:
        info = no_labels(schema.why_no_label, None)
    else:
        info = label_info("parquet-column", labelled=None, rows=None, classes=classes,
                          names_from="huggingface ClassLabel" if classes else None,
                          why=None if classes else "the label column has no ClassLabel names", column=schema.label)
    shards = make_shards(urls)
    return ParquetSource("parquet", shards, classes,
                         {"images": spec, "shards": [s.url for s in shards], "labels": info,
                          "columns": {"image": schema.image, "label": schema.label},
                          **({"allowed_roots": list(allowed)} if allowed else {})}, schema=schema, allowed=allowed)
