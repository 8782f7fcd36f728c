"""One part's extraction (:func:`extract_part`) and the :class:`PartJob` every engine hands it: what
all parts of one run share. The local loop, torchrun ranks, task arrays and Ray actors all call
:func:`extract_part` with a job, then ``parts.commit_part``."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..feature_store import PATCH_GRIDS_FILE, PATHS_FILE, STATE_DIR, read_lines, read_manifest
from ..folder_lock import hold_folder
from ..preprocessing import Preprocess
from ..sources import ImageSource, resolve_inputs
from .encoding import encode_batches
from .finishing import finish_part
from .loader import default_token_budget, plan_batches, plan_packed_batches
from .parts import Part
from .planning import PartPlanner, rank_status_file, status_files
from .spool import has_spool, spool_records
from .writer import DONE, PENDING, RowStatus


class SourceLoader:
    """``resolve_inputs(**source_args)``, listed once per process on first use (picklable, for Ray actors)."""

    def __init__(self, source_args: dict):
        self.source_args = source_args
        self._source = None

    def __call__(self):
        if self._source is None:
            self._source = resolve_inputs(**self.source_args)
        return self._source

    def __getstate__(self):
        return {"source_args": self.source_args, "_source": None}


@dataclass(kw_only=True)
class PartJob:
    """What every part of one run shares. Built by keyword; :meth:`for_process` gives a copy for another
    process or device (the model is loaded once per process, on first use)."""

    # where, and what the manifest of every part records
    out: Path
    settings: dict
    manifest_base: dict
    # the inputs
    preprocess: Preprocess
    source: Callable[[], object]  # the dataset's source (resolved once per process, when a shard is read)
    paths: list[str] | None  # flat sources: the whole listing
    labels: np.ndarray | None
    classes: list[str] | None
    labels_expected: bool = False  # shards: the dataset has labels, read with each record
    masks: list[str | None] | None = None  # flat segmentation sources: each row's mask path
    duplicates: dict[int, int] = field(default_factory=dict)  # row -> the earlier row with the same path
    listing_errors: dict[int, tuple[str, str]] = field(default_factory=dict)  # rows the listing found unusable
    # the model
    checkpoint: str | Path
    layers: list[int]
    norm: bool
    add_cls: bool
    compute_dtype: str
    device: object
    hidden: int
    packed_attention: str
    # batching, loading, writing
    batch_size: int
    packed: bool
    max_batch_tokens: int | None
    workers: int
    strict: bool
    progress: bool
    commit_interval: float
    encoder_loaded: object = field(default=None, init=False, repr=False, compare=False)

    def encoder(self):
        """The model, loaded once per process for all the parts it extracts."""
        if self.encoder_loaded is None:
            from ..encoder import SailEncoder

            self.encoder_loaded = SailEncoder.from_pretrained(
                self.checkpoint, dtype=self.compute_dtype, device=self.device, max_layer=max(self.layers),
                packed_attention=self.packed_attention)
        return self.encoder_loaded

    def for_process(self, **changes) -> "PartJob":
        """A copy with ``changes`` (e.g. ``device=``, ``progress=``) and no model loaded."""
        return dataclasses.replace(self, **changes)

    def __getstate__(self):
        return {**self.__dict__, "encoder_loaded": None}


def part_source(job: PartJob, part: Part, work: Path) -> ImageSource:
    """The rows of one part: a slice of the listing, or the records of a shard (copied into the work
    folder first, see :mod:`.spool`; a resumed part reads its own ``paths.txt`` instead)."""
    if part.shard is None:
        rows = slice(part.first_row, part.first_row + part.num_rows)
        return ImageSource(job.paths[rows], None if job.labels is None else job.labels[rows], job.classes,
                           description={"part": part.describe()},
                           masks=None if job.masks is None else job.masks[rows])
    if (work / PATHS_FILE).is_file() and has_spool(work / STATE_DIR):
        paths = read_lines(work / PATHS_FILE)
        return ImageSource(paths, None, job.classes, description={"part": part.describe()})
    source = job.source()
    shard = next(s for s in source.shards if s.name == part.shard)
    records = spool_records(source.records(shard), work / STATE_DIR)
    labels = None
    if job.labels_expected:
        labels = np.array([-1 if r.label is None else r.label for r in records], dtype=np.int64)
    return ImageSource([r.key for r in records], labels, job.classes, description={"part": part.describe()},
                       errors={row: r.error for row, r in enumerate(records) if r.error is not None})


def extract_part(job: PartJob, part: Part, bar=None) -> int:
    """Extract one part into its work folder (resuming what an earlier run left there), under the
    part's own lock; returns the images processed. The caller commits it (``parts.commit_part``)."""
    work = part.work_folder(job.out)
    first, count = part.first_row or 0, part.num_rows or 0
    known = {row - first: error for row, error in job.listing_errors.items() if first <= row < first + count}
    known.update({row - first: ("duplicate", f"duplicate path: same as row {orig}; extracted once, at row {orig}")
                  for row, orig in job.duplicates.items() if first <= row < first + count})
    with hold_folder(work, "sail-vision extract", option=f"part {part.name} of --out"):
        planner = PartPlanner(work, job.settings, {**job.manifest_base, "part": part.describe()}, job.preprocess,
                              lambda: part_source(job, part, work), hidden=job.hidden, strict=job.strict,
                              workers=job.workers, progress=job.progress and bar is None, known_failures=known)
        if planner.prepare(resume=True, overwrite=False) == "complete":
            return 0
        started = time.monotonic()
        manifest = read_manifest(work)
        status = RowStatus.combined(status_files(work), manifest["num_items"])
        grids = np.load(work / PATCH_GRIDS_FILE)
        if job.packed:
            extra = 2 + int(job.add_cls)
            budget = job.max_batch_tokens or default_token_budget(grids, job.batch_size, extra)
            batches = plan_packed_batches(grids, budget, extra)
        else:
            batches = plan_batches(grids, job.batch_size)
        pending = [b for b in batches if (status[b] == PENDING).any()]
        resumed = len(pending) < len(batches) or int((status == DONE).sum()) > 0
        if not rank_status_file(work, 0).is_file():
            RowStatus.create(rank_status_file(work, 0), manifest["num_items"])
        processed = 0
        if pending:
            processed, _ = encode_batches(
                work, manifest, pending, encoder=job.encoder(), checkpoint=job.checkpoint, layers=job.layers,
                norm=job.norm, add_cls=job.add_cls, compute_dtype=job.compute_dtype, device=job.device,
                preprocess=job.preprocess, workers=job.workers, strict=job.strict, progress=job.progress, rank=0,
                commit_interval=job.commit_interval, bar=bar)
        finish_part(work, manifest, seconds=time.monotonic() - started, world_size=1, workers=job.workers,
                    device_type=job.device.type, resumed=resumed)
        return processed
