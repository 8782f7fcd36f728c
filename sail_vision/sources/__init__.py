"""Input sources: which images a dataset holds, in what order, with which labels and masks.

``resolve_inputs`` turns ``--images`` (and ``--layout`` / ``--split`` / ``--labels-file`` /
``--masks``) into a :class:`~sail_vision.sources.base.Source`: an :class:`ImageSource` for files
listed up front (folder, class folders, ADE20K, image + mask pairs, list files) or a sharded
source (WebDataset tar shards, Parquet files). Sources list and open inputs, nothing else; see
docs/inputs.md.
"""

from .base import Record, Shard, Source
from .containment import allowed_roots
from .files import IMAGE_EXTENSIONS, ImageSource, find_duplicates
from .labels import labels_summary
from .resolve import LAYOUTS, resolve_inputs

__all__ = ["Record", "Shard", "Source", "ImageSource", "resolve_inputs", "find_duplicates", "labels_summary",
           "IMAGE_EXTENSIONS", "LAYOUTS", "allowed_roots"]
