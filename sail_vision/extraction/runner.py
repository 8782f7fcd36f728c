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
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import numpy as np

from ..checkpoint_digest import weights_digest
from ..feature_store import (FAILURES_FILE, LABELS_FILE, MANIFEST_FILE, MASK_PATHS_FILE, PATCH_GRIDS_FILE, PATHS_FILE,
                             VALID_FILE, check_free_space, manifest_header, read_lines, read_manifest, remove_temporary_files,
                             software_versions)
from ..folder_lock import hold_folder
from ..packing import resolve_packed_attention
from ..preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocess
from ..sources import allowed_roots, find_duplicates
from .distributed import DistContext
from .finishing import finish_dataset, join_features, space_to_finish
from .options import ExtractOptions, resolve_compute_dtype
from .part_job import PartJob, SourceLoader, extract_part
from .parts import Part, commit_part, is_committed, parts_from_manifest, task_slice
from .planning import DatasetPlanner, check_task_count, listing_errors
from .ray_engine import extract_parts_on_ray
from .results import ExtractionError, ExtractionResult, result_from_manifest, views_of
from .views import ViewSource


#: How long a task of a task array waits for another task that is planning or joining (seconds).
SHARED_LOCK_WAIT_S = 600


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
    from ..checkpoint import checkpoint_source, open_checkpoint
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
    ckpt = open_checkpoint(checkpoint, weights=False, progress=o.progress)  # a hub id: config, tokenizer, index
    cfg = ckpt.config
    layers = resolve_layer_indices(layers, cfg.num_hidden_layers)
    if ckpt.repo_id is not None:  # then the shards of these layers, at the commit just resolved
        ckpt = open_checkpoint(ckpt.spec, max_layer=max(layers), progress=o.progress)
        checkpoint = ckpt.spec
    preprocess = Preprocess.create(cfg.vision_patch_size, o.resolution, o.max_tokens, o.max_pixels, o.jpeg_draft)
    out = Path(out).expanduser().absolute()
    created, failed = not out.exists(), False  # a failed start removes an --out it created and left empty
    if isinstance(images, (list, tuple)) and len(images) == 1:
        images = images[0]
    images_arg = ([_absolute_spec(str(p)) for p in images] if isinstance(images, (list, tuple))
                  else _absolute_spec(str(images)))
    source_args = {"images": images_arg, "layout": o.layout, "split": o.split, "limit": o.limit,
                   "labels_file": str(Path(o.labels_file).expanduser().absolute()) if o.labels_file else None}
    if o.masks is not None:  # only when given: settings of extractions without masks stay as they were
        source_args["masks"] = str(Path(o.masks).expanduser().absolute())
    if o.depths is not None:  # likewise
        source_args["depths"] = str(Path(o.depths).expanduser().absolute())
    if o.depth_scale is not None:
        source_args["depth_scale"] = float(o.depth_scale)
    if o.allow_paths_under:  # likewise
        source_args["allow_paths_under"] = list(allowed_roots(o.allow_paths_under))
    if o.reduce_zero_label is not None:
        source_args["reduce_zero_label"] = bool(o.reduce_zero_label)
    add_cls = "cls" in pools
    packed = o.batching == "packed" and preprocess.fixed_grid is None  # a fixed resolution has one grid

    def describe_run() -> tuple[dict, dict]:
        """(settings resume compares, manifest skeleton); rank 0 only: hashing the weights reads them all."""
        # a hub download holds only the shards of these layers: they are what identifies its weights
        digest = weights_digest(ckpt, progress=o.progress,
                                files=ckpt.encoder_files(max(layers)) if ckpt.partial else None)
        settings = {"config_fingerprint": cfg.fingerprint(), "weights_digest": digest,
                    **o.output_settings(compute_dtype=compute_dtype, packed=packed, packed_kernel=packed_kernel,
                                        preprocessing=preprocess.describe(), source_args=source_args,
                                        layers=layers, revision=ckpt.revision)}
        attention = describe_attention("sdpa", device.type, compute_dtype,
                                       cfg.num_attention_heads // cfg.num_key_value_heads)
        if packed:
            attention += f"; images of different sizes packed, block-diagonal attention: {packed_kernel}"
        manifest_base = {
            **manifest_header(complete=False), "num_items": 0,
            "num_layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size, "layers": layers, "pools": pools,
            "features": {}, "valid": VALID_FILE, "labels": None, "masks": None, "classes": None, "paths": PATHS_FILE,
            "patch_grids": PATCH_GRIDS_FILE, "failures": {"file": FAILURES_FILE, "count": None},
            "checkpoint": {**checkpoint_source(ckpt), "config_fingerprint": cfg.fingerprint(),
                           "weights_digest": digest, "config": cfg.to_dict()},
            "preprocessing": {**preprocess.describe(), "norm": bool(o.norm), "add_cls": add_cls,
                              "resize": "bilinear", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "dtypes": {"compute": compute_dtype, "save": o.save_dtype},
            "attention": attention,
            "settings": settings, "software": software_versions(),
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
                    listing = SourceLoader(source_args)
                    if o.views:
                        listing = ViewSource(listing, o.views)
                    planner = DatasetPlanner(out, settings, manifest_base, listing,
                                              part_size=o.part_size, progress=o.progress)
                    if o.finalize and not (out / MANIFEST_FILE).is_file():
                        raise ExtractionError(f"--out {out}: nothing to finalize (no {MANIFEST_FILE}); run the "
                                              f"extraction first")
                    outcome = planner.prepare(resume=o.resume or shared, overwrite=o.overwrite)
                    check_task_count(out, tasks.num_tasks)
            except Exception as exc:
                dist.broadcast(("error", str(exc)))
                raise
        outcome = dist.broadcast(outcome)
        if isinstance(outcome, tuple):
            raise ExtractionError(f"rank 0 could not start: {outcome[1]}")
        with dist.together("before its first part"):
            manifest = read_manifest(out)
        if outcome == "complete":
            joined = (manifest.get("parts") or {}).get("consolidated", True)
            if dist.is_main and (o.consolidate or joined):
                with held_briefly():  # a join or cleanup that was interrupted, or a join asked for now
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
            job = PartJob(
                out=out, settings=manifest["settings"],
                manifest_base={k: v for k, v in manifest.items() if k != "parts"},
                preprocess=preprocess, source=SourceLoader(source_args), paths=paths, labels=labels,
                classes=manifest.get("classes"), labels_expected=bool(manifest.get("labels")), masks=masks,
                duplicates=find_duplicates(paths) if flat else {}, listing_errors=listing_errors(out) if flat else {},
                checkpoint=checkpoint, layers=layers, norm=bool(o.norm), add_cls=add_cls, compute_dtype=compute_dtype,
                device=device, hidden=cfg.hidden_size, packed_attention=o.packed_attention,
                batch_size=int(o.batch_size), packed=packed, max_batch_tokens=o.max_batch_tokens, workers=workers,
                strict=o.strict, progress=o.progress and dist.is_main, commit_interval=o.commit_interval)
            todo = [] if o.finalize else [p for p in tasks.parts_for(parts) if not is_committed(out, p)]
            if dist.is_main and todo:  # the parts still to extract and the join must fit: fail now, not at the end
                check_free_space(out, space_to_finish(out, manifest, consolidate=o.consolidate),
                                 what="the remaining parts and their join")
        failure, processed = None, 0
        try:
            if o.engine == "ray" and todo:
                processed, _ = extract_parts_on_ray(job, todo, address=o.ray_address, actors=o.ray_actors,
                                                    cpus_per_actor=o.ray_cpus_per_actor, progress=job.progress)
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
                                    world_size=dist.world_size, parts_waiting=len(waiting), views=views_of(manifest),
                                    parts_total=len(parts))
        return result_from_manifest(out, manifest, seconds=seconds, images_processed=processed, world_size=dist.world_size)
    except BaseException:
        failed = True
        raise
    finally:
        try:
            lock.close()
        finally:
            dist.close()
            if failed and created and dist.is_main:
                remove_if_empty(out)


def remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` if it is an empty folder (a failed start's ``--out``); anything in it keeps it."""
    try:
        folder.rmdir()
    except OSError:
        pass


def _extract_parts(job: PartJob, todo: Sequence[Part]) -> int:
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
                processed += extract_part(job, part, bar)
                commit_part(job.out, part)
    finally:
        if bar is not None:
            bar.close()
    return processed
