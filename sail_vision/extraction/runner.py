"""``extract()``: encode a dataset and store chosen (layer, pool) features as ``.npy`` files.

The dataset is listed once and cut into parts (:mod:`.parts`). Each part is planned on its own
(patch grids, preallocated files, a per-row status file; see ``feature_store`` for the output
format), encoded with rows written in place, finished and committed; ranks and tasks take parts,
and whoever finds them all committed joins them. ``resume`` skips committed parts and redoes only
batches with unfinished rows, so an interrupted run ends with the same bytes as an uninterrupted
one; so does any split of the parts.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..checkpoint_digest import weights_digest
from ..feature_store import (FAILURES_FILE, FORMAT_NAME, FORMAT_VERSION, LABELS_FILE, MANIFEST_FILE, MASK_PATHS_FILE,
                             PATCH_GRIDS_FILE, PATHS_FILE, STATE_DIR, VALID_FILE, _software_versions, read_manifest,
                             remove_temporary_files)
from ..folder_lock import hold_folder
from ..packing import resolve_packed_attention
from ..preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ..sources import ImageSource, find_duplicates, resolve_inputs
from .distributed import DistContext
from .encoding import encode_batches
from .finishing import finish_dataset, finish_part, join_features
from .loader import default_token_budget, plan_batches, plan_packed_batches
from .options import ExtractOptions, resolve_compute_dtype
from .parts import Part, commit_part, is_committed, parts_from_manifest, task_slice
from .planning import DatasetPlanner, listing_errors, PartPlanner, rank_status_file, read_lines, status_files
from .results import ExtractionError, ExtractionResult, result_from_manifest
from .spool import has_spool, spool_records
from .views import ViewSource
from .writer import DONE, PENDING, RowStatus


#: How long a task of a task array waits for another task that is planning or joining (seconds).
SHARED_LOCK_WAIT_S = 600


@dataclass
class _PartJob:
    """What every part of one run shares (the dataset's settings, the listing, the compute setup)."""

    out: Path
    settings: dict
    manifest_base: dict
    preprocess: Preprocess
    source: Callable[[], object]  # the dataset's source (resolved once per process, when a shard is read)
    paths: list[str] | None  # flat sources: the whole listing
    labels: np.ndarray | None
    classes: list[str] | None
    duplicates: dict[int, int]
    checkpoint: str | Path
    layers: list[int]
    norm: bool
    add_cls: bool
    compute_dtype: str
    device: object
    hidden: int
    batch_size: int
    packed: bool
    max_batch_tokens: int | None
    packed_attention: str
    workers: int
    strict: bool
    progress: bool
    commit_interval: float
    labels_expected: bool = False
    masks: list[str | None] | None = None  # flat segmentation sources: each row's mask path
    listing_errors: dict[int, tuple[str, str]] = field(default_factory=dict)  # rows the listing found unusable
    _encoder: object = field(default=None, repr=False)

    def encoder(self):
        """The model, loaded once per process for all the parts it extracts."""
        if self._encoder is None:
            from ..encoder import SailEncoder

            self._encoder = SailEncoder.from_pretrained(self.checkpoint, dtype=self.compute_dtype, device=self.device,
                                                        max_layer=max(self.layers),
                                                        packed_attention=self.packed_attention)
        return self._encoder


class _SourceLoader:
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


def _part_source(job: _PartJob, part: Part, work: Path) -> ImageSource:
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


def _extract_part(job: _PartJob, part: Part, bar=None) -> int:
    """Extract one part into its work folder (resuming what an earlier run left there), under the
    part's own lock; returns the images processed. The caller commits it."""
    work = part.work_folder(job.out)
    first, count = part.first_row or 0, part.num_rows or 0
    known = {row - first: error for row, error in job.listing_errors.items() if first <= row < first + count}
    known.update({row - first: ("duplicate", f"duplicate path: same as row {orig}; extracted once, at row {orig}")
                  for row, orig in job.duplicates.items() if first <= row < first + count})
    with hold_folder(work, "sail-vision extract", option=f"part {part.name} of --out"):
        planner = PartPlanner(work, job.settings, {**job.manifest_base, "part": part.describe()}, job.preprocess,
                           lambda: _part_source(job, part, work), hidden=job.hidden, strict=job.strict,
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


def _absolute_spec(images: str) -> str:
    """``--images`` with local paths made absolute (each ``::`` piece of a shard list; ``pipe:``
    commands and URLs as they are), so that the settings name the same inputs from any directory."""
    def one(piece: str) -> str:
        if piece.startswith(("pipe:", "file:")) or "://" in piece or not piece:
            return piece
        return str(Path(piece).expanduser().absolute())

    return "::".join(one(piece) for piece in images.split("::"))


def extract(checkpoint: str | Path, images, out: str | Path, options: ExtractOptions | None = None,
            **kwargs) -> ExtractionResult:
    """Extract features of ``images`` with the SAIL checkpoint at ``checkpoint`` into ``out``.

    The options are an :class:`~.options.ExtractOptions` (or its fields as keyword arguments, e.g.
    ``extract(c, imgs, out, layers=[-1], pools=["mean"])``); every field is documented there.

    ``images``: a folder, a list file, or a list of paths (see ``inputs.resolve_inputs`` and the
    ``layout`` / ``split`` / ``labels_file`` options). One ``layer-{k}_{pool}.npy`` is written
    per (layer, pool). Bad images are skipped and recorded (``strict`` stops at the first one
    instead). At native resolution images of different sizes are packed into batches of at most
    ``max_batch_tokens`` tokens (default: ``batch_size`` times the longest image's), attention
    block-diagonal (``packed_attention`` kernel); ``batching="grouped"`` runs same-grid batches of
    ``batch_size`` instead.

    The inputs are cut into parts of ``part_size`` rows (see :mod:`.parts`), each extracted and
    committed on its own; under ``torchrun`` each rank takes its share of the parts, and
    ``num_tasks`` / ``task_index`` (default: Slurm's array variables) run one task of a task
    array. Whoever finds every part committed (the single process, rank 0, the last task, or
    ``finalize=True``) finishes the dataset and, unless ``consolidate=False``, joins the parts
    into the single files (``feature_store.open_feature_dir`` reads either form). ``engine="ray"``
    hands the parts to a pool of Ray actors instead (:mod:`.ray_engine`; ``ray_address``,
    ``ray_actors``, ``ray_cpus_per_actor``). Returns an :class:`ExtractionResult`;
    failed images are counted there and in the manifest, not raised.
    """
    from ..attention import describe_attention
    from ..checkpoint import SailCheckpoint
    from ..devices import resolve_device, resolve_dtype
    from ..layer_indices import resolve_layer_indices

    started = time.monotonic()
    if options is None:
        options = ExtractOptions(**kwargs)
    elif kwargs:
        raise TypeError(f"extract(): pass either options or keyword options, not both ({', '.join(kwargs)})")
    o = options.checked()
    workers, layers, pools = o.workers, o.layers, o.pools
    device = resolve_device(o.device)
    if o.dtype not in (None, "auto"):
        resolve_compute_dtype(o.dtype, device)  # a bad --dtype fails before any process group is joined
    ckpt = SailCheckpoint(checkpoint)
    cfg = ckpt.config
    layers = resolve_layer_indices(layers, cfg.num_hidden_layers)
    preprocess = Preprocess.create(cfg.vision_patch_size, o.resolution, o.max_tokens, o.max_pixels, o.jpeg_draft)
    out = Path(out).expanduser().absolute()
    if isinstance(images, (list, tuple)) and len(images) == 1:
        images = images[0]
    images_arg = ([str(Path(p).absolute()) for p in images] if isinstance(images, (list, tuple))
                  else _absolute_spec(str(images)))
    source_args = {"images": images_arg, "layout": o.layout, "split": o.split, "limit": o.limit,
                   "labels_file": str(Path(o.labels_file).absolute()) if o.labels_file else None}
    if o.masks is not None:  # only when given: settings of extractions without masks stay as they were
        source_args["masks"] = str(Path(o.masks).expanduser().absolute())
    if o.reduce_zero_label is not None:
        source_args["reduce_zero_label"] = bool(o.reduce_zero_label)
    add_cls = "cls" in pools
    packed = o.batching == "packed" and preprocess.fixed_grid is None  # a fixed resolution has one grid

    def describe_run() -> tuple[dict, dict]:
        """(settings resume compares, manifest skeleton); rank 0 only: hashing the weights reads them all."""
        digest = weights_digest(ckpt, progress=o.progress)
        settings = {"config_fingerprint": cfg.fingerprint(), "weights_digest": digest,
                    **o.output_settings(compute_dtype=compute_dtype, packed=packed, packed_kernel=packed_kernel,
                                        preprocessing=preprocess.describe(), source_args=source_args,
                                        layers=layers)}
        attention = describe_attention("sdpa", device.type, compute_dtype,
                                       cfg.num_attention_heads // cfg.num_key_value_heads)
        if packed:
            attention += f"; images of different sizes packed, block-diagonal attention: {packed_kernel}"
        manifest_base = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "complete": False, "num_items": 0,
            "num_layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size, "layers": layers, "pools": pools,
            "features": {}, "valid": VALID_FILE, "labels": None, "masks": None, "classes": None, "paths": PATHS_FILE,
            "patch_grids": PATCH_GRIDS_FILE, "failures": {"file": FAILURES_FILE, "count": None},
            "checkpoint": {"path": str(Path(checkpoint).absolute()), "config_fingerprint": cfg.fingerprint(),
                           "weights_digest": digest, "config": cfg.to_dict()},
            "preprocessing": {**preprocess.describe(), "norm": bool(o.norm), "add_cls": add_cls,
                              "resize": "bilinear", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "dtypes": {"compute": compute_dtype, "save": o.save_dtype},
            "attention": attention,
            "settings": settings, "software": _software_versions(),
        }
        if o.views:
            manifest_base["views"] = o.views_entry()
        return settings, manifest_base

    dist, device = DistContext.setup(device)
    tasks = task_slice(o.num_tasks, o.task_index, rank=dist.rank, world_size=dist.world_size)
    # A single run (one process or one torchrun job) holds the folder for its whole life; the tasks of
    # a task array share it: each holds it only while planning or joining, and holds its parts.
    shared = tasks.is_task_array or o.finalize
    lock = contextlib.ExitStack()

    def held_briefly():
        """The folder's lock while a task plans or joins (a single run already holds it throughout)."""
        if not shared:
            return contextlib.nullcontext()
        return hold_folder(out, "sail-vision extract", wait=SHARED_LOCK_WAIT_S)

    try:
        compute_dtype = resolve_compute_dtype(o.dtype, device)
        packed_kernel = resolve_packed_attention(o.packed_attention, device, resolve_dtype(compute_dtype))
        outcome = None
        if dist.is_main:
            try:
                if not shared:
                    lock.enter_context(hold_folder(out, "sail-vision extract"))
                with held_briefly():
                    settings, manifest_base = describe_run()
                    listing = _SourceLoader(source_args)
                    if o.views:
                        listing = ViewSource(listing, o.views)
                    planner = DatasetPlanner(out, settings, manifest_base, listing,
                                              part_size=o.part_size, progress=o.progress)
                    if o.finalize and not (out / MANIFEST_FILE).is_file():
                        raise ExtractionError(f"--out {out}: nothing to finalize (no {MANIFEST_FILE}); run the "
                                              f"extraction first")
                    outcome = planner.prepare(resume=o.resume or shared, overwrite=o.overwrite)
            except Exception as exc:
                dist.broadcast(("error", str(exc)))
                raise
        outcome = dist.broadcast(outcome)
        if isinstance(outcome, tuple):
            raise ExtractionError(f"rank 0 could not start: {outcome[1]}")
        with dist.together("before its first part"):
            manifest = read_manifest(out)
        if outcome == "complete":
            if o.consolidate and dist.is_main and not (manifest.get("parts") or {}).get("consolidated", True):
                with held_briefly():  # a join that was interrupted, or asked for now
                    join_features(out)
            dist.barrier()
            manifest = read_manifest(out)
            return result_from_manifest(out, manifest, already_complete=True, world_size=dist.world_size)
        with dist.together("before its first part"):  # one rank failing here stops every rank now
            parts = parts_from_manifest(manifest)
            flat = all(p.shard is None for p in parts)
            paths = read_lines(out / PATHS_FILE, manifest["num_items"]) if flat else None
            labels = np.load(out / LABELS_FILE) if flat and manifest.get("labels") else None
            masks = ([m or None for m in read_lines(out / MASK_PATHS_FILE, manifest["num_items"])]
                     if flat and manifest.get("masks") else None)
            job = _PartJob(out, manifest["settings"], {k: v for k, v in manifest.items() if k != "parts"}, preprocess,
                           _SourceLoader(source_args), paths, labels,
                           manifest.get("classes"), find_duplicates(paths) if flat else {}, checkpoint, layers,
                           bool(o.norm), add_cls, compute_dtype, device, cfg.hidden_size, int(o.batch_size), packed,
                           o.max_batch_tokens, o.packed_attention, workers, o.strict, o.progress and dist.is_main,
                           o.commit_interval, labels_expected=bool(manifest.get("labels")), masks=masks,
                           listing_errors=listing_errors(out) if flat else {})
            todo = [] if o.finalize else [p for p in tasks.parts_for(parts) if not is_committed(out, p)]
        failure, processed = None, 0
        try:
            if o.engine == "ray" and todo:
                from .ray_engine import extract_parts_on_ray

                processed, _ = extract_parts_on_ray(job, todo, address=o.ray_address, actors=o.ray_actors,
                                                    cpus_per_actor=o.ray_cpus_per_actor)
            else:
                processed = _extract_parts(job, todo)
        except Exception as exc:
            if not dist.enabled:
                raise
            # Tell the other ranks (they would otherwise wait in the next collective until its timeout).
            failure = exc
        shares = dist.gather((processed, None if failure is None else str(failure)))
        if failure is not None:
            raise failure
        stopped = [(rank, message) for rank, (_, message) in enumerate(shares) if message is not None]
        if stopped:
            rank, message = stopped[0]
            raise ExtractionError(f"rank {rank} stopped: {message} (the parts every rank finished are kept; "
                                  f"fix the cause and rerun with --resume)")
        processed = sum(count for count, _ in shares)
        seconds = time.monotonic() - started
        waiting = [p.name for p in parts if not is_committed(out, p)]
        if dist.is_main and not waiting:
            with held_briefly():
                manifest = read_manifest(out)
                if not manifest.get("complete"):
                    manifest = finish_dataset(out, manifest, {
                        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "seconds_last_session": round(seconds, 3), "world_size": dist.world_size,
                        "num_tasks": tasks.num_tasks, "workers": workers, "device_type": device.type},
                        join=o.consolidate)
                    remove_temporary_files(out)
                elif o.consolidate:
                    manifest = join_features(out, manifest)
        dist.barrier()
        manifest = read_manifest(out)
        if not manifest.get("complete"):
            if o.finalize:
                raise ExtractionError(f"--out {out}: cannot finalize: {len(waiting)} part(s) not finished "
                                      f"({', '.join(waiting[:5])}{' ...' if len(waiting) > 5 else ''}); run the "
                                      f"tasks that own them again, then --finalize")
            return ExtractionResult(out, manifest["num_items"], 0, 0, seconds=seconds, images_processed=processed,
                                    world_size=dist.world_size, parts_waiting=len(waiting),
                                    parts_total=len(parts))
        return result_from_manifest(out, manifest, seconds=seconds, images_processed=processed, world_size=dist.world_size)
    finally:
        try:
            lock.close()
        finally:
            dist.close()


def _extract_parts(job: _PartJob, todo: Sequence[Part]) -> int:
    """Extract and commit each part of ``todo`` in order; one progress bar for all of them."""
    bar = None
    if job.progress and len(todo) > 1:
        from tqdm import tqdm

        known = all(p.num_rows is not None for p in todo)
        bar = tqdm(total=sum(p.num_rows for p in todo) if known else None, desc=f"extracting {len(todo)} parts",
                   unit="img",
                   dynamic_ncols=True, smoothing=0.05)
    processed = 0
    try:
        for part in todo:
            if not is_committed(job.out, part):
                processed += _extract_part(job, part, bar)
                commit_part(job.out, part)
    finally:
        if bar is not None:
            bar.close()
    return processed
