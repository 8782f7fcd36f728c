"""Input sources: which images a dataset holds, in what order, with which labels.

``resolve_inputs`` turns ``--images`` (and ``--layout`` / ``--split`` / ``--labels-file``) into a
:class:`~sail_vision.sources.base.Source`. Sources list and open inputs, nothing else.
"""

from .base import Record, Shard, Source
from .files import IMAGE_EXTENSIONS, LAYOUTS, ImageSource, find_duplicates, resolve_inputs

__all__ = ["Record", "Shard", "Source", "ImageSource", "resolve_inputs", "find_duplicates", "IMAGE_EXTENSIONS",
           "LAYOUTS"]
