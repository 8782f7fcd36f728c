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
import functools
import hashlib
import json
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from ..errors import InputError, SailVisionError
from ..feature_store import (FAILURES_FILE, FORMAT_NAME, FORMAT_VERSION, LABELS_FILE, MANIFEST_FILE,
                             PATCH_GRIDS_FILE, PATHS_FILE, STATE_DIR, VALID_FILE, FeatureStoreError,
                             _software_versions, atomic_save_npy, atomic_write_text, check_free_space,
                             describe_bytes, extraction_entries, feature_name, offsets_file_name, parted_files,
                             read_manifest,
                             remove_extraction_files, remove_temporary_files, unallocated_bytes, write_manifest)
from ..checkpoint_digest import weights_digest
from ..folder_lock import hold_folder
from ..pause_points import pause_point
from ..outputs import POOLS
from ..packing import BATCHING, PACKED_ATTENTION, resolve_packed_attention
from ..preprocessing import (ALPHA_BACKGROUND, DEFAULT_MAX_PIXELS, DEFAULT_MAX_TOKENS, IMAGENET_MEAN, IMAGENET_STD,
                             Preprocess)
from .distributed import DistContext
from ..sources import ImageSource, find_duplicates, resolve_inputs
from ..sources.labels import labels_summary
from .parts import (DEFAULT_PART_SIZE, Part, TaskSlice, commit_part, finish_dataset, is_committed, join_features,
                    parts_from_manifest, plan_parts, task_slice)
from .spool import SpooledImages, has_spool, spool_records
from .loader import NO_GRID, batch_loader, default_token_budget, plan_batches, plan_packed_batches, scan_grids
from .writer import (DONE, FAILED, PENDING, ArraySpec, BackgroundWriter, FailureLog, OutputArrays, RowStatus,
                     create_array_file, failure_record)

PLAN_STATUS = "status-plan.npy"
PLANNED_MARK = "planned"
PLAN_FAILURES = "failures-plan.jsonl"
SAVE_DTYPES = ("float16", "float32")
#: Who extracts the parts: this process (or each torchrun rank / array task), or a pool of Ray actors.
ENGINES = ("local", "ray")
FLOAT16_MAX = 65504.0
#: Seconds to sleep after each batch (for crash-safety tests and demos; 0 / unset in normal use).
DELAY_ENV = "SAIL_VISION_EXTRACT_DELAY"


class ExtractionError(SailVisionError):
    """An extraction cannot start, continue, or finish as asked."""


@dataclass
class ExtractionResult:
    """What an :func:`extract` call produced (the same on every rank)."""

    out: Path
    num_items: int
    num_valid: int
    num_failed: int
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    images_processed: int = 0
    output_bytes: int = 0
    already_complete: bool = False
    world_size: int = 1
    labels: str = ""  # one line: labelled rows and classes found, or why there are none
    parts_total: int = 0
    parts_waiting: int = 0  # parts other tasks still have to finish (the dataset is not joined yet)

    @property
    def finished(self) -> bool:
        return self.parts_waiting == 0

    @property
    def images_per_second(self) -> float:
        return self.images_processed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: images, failures, time, speed, bytes on disk."""
        labels = f"\n{self.labels}" if self.labels else ""
        if not self.finished:
            return (f"{self.out}: this task processed {self.images_processed} images in {self.seconds:.1f} s; "
                    f"{self.parts_total - self.parts_waiting} of {self.parts_total} parts are finished, "
                    f"{self.parts_waiting} still to do by the other tasks (the last task to finish joins them, "
                    f"or run the same command with --finalize)")
        if self.already_complete:
            return (f"{self.out}: already complete ({self.num_items} images, {self.num_failed} failed); "
                    f"nothing to do{labels}")
        ranks = f" on {self.world_size} processes" if self.world_size > 1 else ""
        return (f"extracted {self.num_items} images ({self.num_valid} ok, {self.num_failed} failed) in "
                f"{self.seconds:.1f} s{ranks} ({self.images_per_second:.1f} images/s this run), "
                f"{describe_bytes(self.output_bytes)} of features in {self.out}{labels}")


# ---------------------------------------------------------------------------------- options
def _resolve_compute_dtype(dtype, device) -> str:
    from ..devices import auto_dtype, resolve_dtype

    if dtype is None or dtype == "auto":
        return auto_dtype(device)
    return str(resolve_dtype(dtype)).removeprefix("torch.")


def _normalise_pools(pools: str | Iterable[str]) -> list[str]:
    items = [pools] if isinstance(pools, str) else list(pools)
    if not items:
        raise InputError(f"no pool requested; choose from {', '.join(POOLS)}")
    bad = [p for p in items if p not in POOLS]
    if bad:
        raise InputError(f"pool(s) {', '.join(map(repr, bad))}: choose from {', '.join(POOLS)}")
    return list(dict.fromkeys(items))


# ---------------------------------------------------------------------------------- planning
def _feature_specs(layers: Sequence[int], pools: Sequence[str], hidden: int, num_items: int,
                   fixed_grid, total_patches: int, save_dtype: str) -> list[ArraySpec]:
    specs = []
    for layer in layers:
        for pool in pools:
            name = feature_name(layer, pool)
            if pool != "patch":
                specs.append(ArraySpec(name, f"{name}.npy", (num_items, hidden), save_dtype, "pooled", layer, pool))
            elif fixed_grid is not None:
                specs.append(ArraySpec(name, f"{name}.npy", (num_items, *fixed_grid, hidden), save_dtype, "grid",
                                       layer, pool))
            else:
                specs.append(ArraySpec(name, f"{name}.npy", (total_patches, hidden), save_dtype, "rows", layer,
                                       pool, offsets_file_name(layer)))
    return specs


def _specs_from_manifest(manifest: dict) -> list[ArraySpec]:
    return [ArraySpec(name, info["file"], tuple(info["shape"]), info["dtype"], info["layout"], info["layer"],
                      info["pool"], info.get("offsets")) for name, info in manifest["features"].items()]


class _Planner:
    """Rank 0's work before encoding: check the folder, list inputs, plan, preallocate."""

    def __init__(self, out: Path, settings: dict, manifest_base: dict, preprocess: Preprocess,
                 source: Callable[[], ImageSource], *, hidden: int, strict: bool, workers: int, progress: bool,
                 known_failures: dict[int, tuple[str, str]] | None = None):
        self.out = out
        self.state = out / STATE_DIR
        self.settings = settings
        self.manifest_base = manifest_base
        self.preprocess = preprocess
        self._source = source
        self.known_failures = known_failures or {}
        self.hidden = hidden
        self.strict = strict
        self.workers = workers
        self.progress = progress

    def prepare(self, *, resume: bool, overwrite: bool) -> str:
        """'complete' when a finished identical extraction is already there, else 'ready'.

        Runs while this process holds the folder's lock. Only the extractor's own files are ever
        removed (``feature_store.remove_extraction_files``); a folder left by an interrupted start,
        planning or ``--overwrite`` is accepted by both ``--resume`` and ``--overwrite``.
        """
        out = self.out
        pause_point("extract:planning")
        own, other = extraction_entries(out)
        if (out / MANIFEST_FILE).is_file():
            try:
                manifest = read_manifest(out)
            except FeatureStoreError as exc:
                raise ExtractionError(f"--out {out}: has a {MANIFEST_FILE} that is not a usable sail-vision "
                                      f"manifest ({exc}); choose another --out or delete it yourself") from None
            if overwrite:
                remove_extraction_files(out, manifest)
            elif not resume:
                state = "a finished" if manifest.get("complete") else "an unfinished"
                raise ExtractionError(f"--out {out}: already holds {state} extraction; pass --resume to continue "
                                      f"it or --overwrite to start again")
            else:
                self._check_same_settings(manifest)
                if manifest.get("complete"):
                    remove_temporary_files(out)  # an earlier run may have stopped just before doing it
                    return "complete"
                if (self.state / PLANNED_MARK).is_file():
                    self._check_same_inputs()
                    self._check_free_space(manifest)
                    return "ready"
                # the previous run stopped while planning: plan again (files of others stay)
                remove_extraction_files(out, manifest, keep_others=True)
        elif own:  # no manifest, only the remains of an interrupted start or --overwrite
            if not (resume or overwrite):
                raise ExtractionError(f"--out {out}: holds the remains of an extraction that stopped before it "
                                      f"was planned; pass --resume or --overwrite to start it again")
            remove_extraction_files(out, None, keep_others=resume and not overwrite)
        elif other:
            shown = ", ".join(p.name for p in other[:5]) + (f" and {len(other) - 5} more" if len(other) > 5 else "")
            raise ExtractionError(f"--out {out}: is not empty ({shown}) and is not a sail-vision feature folder; "
                                  f"choose an empty or new folder")
        self._plan()
        return "ready"

    def _check_free_space(self, manifest: dict) -> None:
        needed = sum(unallocated_bytes(self.out / info["file"]) for info in manifest["features"].values())
        check_free_space(self.out, needed)

    def _check_same_settings(self, manifest: dict) -> None:
        before = manifest.get("settings") or {}
        changed = [k for k in sorted(set(before) | set(self.settings)) if before.get(k) != self.settings.get(k)]
        if changed:
            details = "; ".join(f"{k}: was {before.get(k)!r}, now {self.settings.get(k)!r}" for k in changed)
            raise ExtractionError(f"--out {self.out}: cannot resume with different settings ({details}); rerun "
                                  f"with the original options, or pass --overwrite to start again")

    def _check_same_inputs(self) -> None:
        listed = (self.out / PATHS_FILE).read_text(encoding="utf-8")
        now = "".join(p + "\n" for p in self._source().paths)
        if hashlib.sha256(listed.encode()).digest() != hashlib.sha256(now.encode()).digest():
            raise ExtractionError(f"--out {self.out}: the input images changed since this extraction started "
                                  f"(the list differs from {PATHS_FILE}); pass --overwrite to start again")

    def _plan(self) -> None:
        source = self._source()
        paths = source.paths
        num_items = len(paths)
        known = {**source.errors, **self.known_failures}  # rows the listing itself found unusable
        failures: dict[int, dict] = {row: failure_record(row, paths[row], kind, detail)
                                     for row, (kind, detail) in sorted(known.items())}
        grids = np.zeros((num_items, 2), dtype=np.int32)
        fixed = self.preprocess.fixed_grid
        todo = [r for r in range(num_items) if r not in failures]
        if fixed is not None:
            grids[todo] = fixed
        else:
            for row, grid, failure in scan_grids(paths, self.preprocess, todo, workers=self.workers,
                                                 progress=self.progress, images=row_images(self.out, paths)):
                if failure is None:
                    grids[row] = grid
                else:
                    failures[row] = failure_record(row, paths[row], *failure)
        if self.strict and failures:
            first = failures[min(failures)]
            raise ExtractionError(f"{first['path']}: {first['reason']} (--strict stops at the first bad input)")
        grids[list(failures)] = NO_GRID
        counts = grids[:, 0].astype(np.int64) * grids[:, 1]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        specs = _feature_specs(self.settings["layers"], self.settings["pools"], self.hidden, num_items, fixed,
                               int(offsets[-1]), self.settings["save_dtype"])

        check_free_space(self.out, sum(int(np.prod(s.shape)) * s.nbytes_per_value for s in specs))
        self.out.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(exist_ok=True)
        manifest = {**self.manifest_base, "num_items": num_items,
                    "features": {s.name: s.manifest_entry() for s in specs},
                    "labels": LABELS_FILE if source.labels is not None else None,
                    "classes": source.classes, "inputs": source.description}
        write_manifest(self.out, manifest)  # "complete": false from the first moment
        for spec in specs:
            create_array_file(self.out / spec.file, spec.shape, spec.dtype)
            if spec.offsets_file:
                atomic_save_npy(self.out / spec.offsets_file, offsets)
        atomic_save_npy(self.out / PATCH_GRIDS_FILE, grids)
        if source.labels is not None:
            atomic_save_npy(self.out / LABELS_FILE, source.labels.astype(np.int64))
        atomic_write_text(self.out / PATHS_FILE, "".join(p + "\n" for p in paths))
        atomic_write_text(self.state / PLAN_FAILURES,
                          "".join(_json_line(failures[r]) for r in sorted(failures)))
        RowStatus.create(self.state / PLAN_STATUS, num_items, sorted(failures))
        atomic_write_text(self.state / PLANNED_MARK, "")


class _DatasetPlanner(_Planner):
    """The dataset level: list the inputs once (``paths.txt``, ``labels.npy``) and cut them into parts.

    Patch grids are scanned, and files preallocated, by each part's own :class:`_Planner`.
    """

    def __init__(self, out: Path, settings: dict, manifest_base: dict, source: Callable[[], ImageSource], *,
                 part_size: int, progress: bool):
        super().__init__(out, settings, manifest_base, None, source, hidden=0, strict=False, workers=0,
                         progress=progress)
        self.part_size = part_size

    def _check_free_space(self, manifest: dict) -> None:
        pass  # each part checks the space its own files need

    def _check_same_inputs(self) -> None:
        manifest = read_manifest(self.out)
        shards = self._source().shards
        if shards is None:
            return super()._check_same_inputs()
        before = [(p.get("shard"), p.get("url")) for p in manifest["parts"]["items"]]
        if before != [(s.name, s.url) for s in shards]:
            raise ExtractionError(f"--out {self.out}: the input shards changed since this extraction started; "
                                  f"pass --overwrite to start again")

    def _plan(self) -> None:
        source = self._source()
        shards = source.shards
        if shards is None:
            parts = plan_parts(len(source.paths), self.part_size)
        else:  # every shard is a part; its rows are counted when it is read
            parts = [Part(i, None, None, shard=s.name, url=s.url) for i, s in enumerate(shards)]
        self.out.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(exist_ok=True)
        labelled = source.labels is not None if shards is None else bool(getattr(source, "labelled", False))
        manifest = {**self.manifest_base, "num_items": len(source.paths) if shards is None else None,
                    "labels": LABELS_FILE if labelled else None,
                    "classes": source.classes, "inputs": source.description,
                    "parts": {"part_size": self.part_size if shards is None else None, "count": len(parts),
                              "consolidated": False, "items": [p.describe() for p in parts]}}
        write_manifest(self.out, manifest)  # "complete": false from the first moment
        if shards is None:
            if source.labels is not None:
                atomic_save_npy(self.out / LABELS_FILE, source.labels.astype(np.int64))
            atomic_write_text(self.out / PATHS_FILE, "".join(p + "\n" for p in source.paths))
        atomic_write_text(self.state / PLANNED_MARK, "")


def row_images(folder: Path, paths: Sequence[str]) -> Sequence:
    """What to decode for each row of ``folder``: its spooled shard images, else the paths."""
    state = folder / STATE_DIR
    return SpooledImages(state) if has_spool(state) else paths


def rank_status_file(out: Path, rank: int) -> Path:
    """The status file one rank marks its rows in."""
    return out / STATE_DIR / f"status-rank{rank}.npy"


def status_files(out: Path) -> list[Path]:
    """Every status file of an unfinished run (planning's and each rank's)."""
    return sorted((out / STATE_DIR).glob("status-*.npy"))


def _json_line(record: dict) -> str:
    return json.dumps(record, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------------- encoding
def _nonfinite_hint(checkpoint, max_layer: int, compute_dtype: str) -> str:
    """Why the model produced NaN/inf: a damaged or overflowing weight (named), else the compute dtype."""
    from ..checkpoint import SailCheckpoint

    found = SailCheckpoint(checkpoint).find_nonfinite(max_layer=max_layer, dtype=compute_dtype)
    if found is not None:
        return found.describe()
    if compute_dtype in ("float32", "float64"):
        return (f"the model produced NaN/inf in {compute_dtype} from finite weights (every tensor it reads was "
                f"scanned); the checkpoint's values or config.json (rms_norm_eps, rope_theta) are unusual")
    return f"the model produced NaN/inf in {compute_dtype} from finite weights; try --dtype float32"


@dataclass
class _CopyBack:
    """One batch's features on their way to the host: cast on the device, copied without waiting."""

    rows: np.ndarray
    features: dict  # name -> host tensor (pinned on CUDA), in the save dtype
    flags: object  # host bool tensor (features, 2): any NaN/inf, any value beyond float16's range
    patch_counts: list = None  # patches of each image: how a "rows" feature's block splits into images
    ready: object = None  # CUDA event recorded after the copies; None on the CPU

    def per_image(self, spec: ArraySpec) -> np.ndarray | list[np.ndarray]:
        """The host values of ``spec``, one entry per image ((n_i, D) arrays for patch rows)."""
        values = self.features[spec.name].numpy()
        if spec.layout == "rows":
            return np.split(values, np.cumsum(self.patch_counts)[:-1])
        if spec.layout == "grid":
            return values.reshape(values.shape[0], *spec.shape[1:])
        return values


def _start_copy_back(encoding, specs: Sequence[ArraySpec], save_dtype, rows) -> _CopyBack:
    """Queue the checks, casts and device-to-host copies of one batch; nothing waits for the device."""
    import torch

    # Patch rows of images of different grids travel as one (sum of patches, D) block per feature.
    pooled = [encoding.patch_rows(spec.layer) if spec.layout == "rows" else encoding.pooled(spec.layer, spec.pool)
              for spec in specs]
    flags = torch.stack([torch.stack([(~torch.isfinite(v)).any(),
                                      (v.abs() > FLOAT16_MAX).any() if save_dtype == torch.float16
                                      else torch.zeros((), dtype=torch.bool, device=v.device)])
                         for v in pooled])
    on_cuda = flags.is_cuda

    def to_host(tensor):
        if not on_cuda:
            return tensor
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor, non_blocking=True)

    features = {spec.name: to_host(values.to(dtype=save_dtype)) for spec, values in zip(specs, pooled)}
    copy = _CopyBack(rows, features, to_host(flags), patch_counts=[nh * nw for nh, nw in encoding.grids])
    if on_cuda:
        copy.ready = torch.cuda.Event()
        copy.ready.record()
    return copy


def _finish_copy_back(copy: _CopyBack, specs: Sequence[ArraySpec], paths,
                      nonfinite_hint: Callable[[], str]) -> dict[str, np.ndarray]:
    """Wait for one batch's copies, refuse values that cannot be stored, return the arrays to write.

    ``nonfinite_hint`` is called only when the model produced NaN/inf, to say why (it scans the weights).
    """
    if copy.ready is not None:
        copy.ready.synchronize()
    flags = copy.flags.numpy()
    if flags.any():
        first = int(np.flatnonzero(flags.any(1))[0])
        spec = specs[first]
        values = copy.per_image(spec)  # NaN stays NaN; a float16 overflow became inf
        bad = [not np.isfinite(np.asarray(v, dtype=np.float32)).all() for v in values]
        which = sorted(int(copy.rows[i]) for i in np.flatnonzero(bad))
        overflow = bool(flags[first, 1]) and not bool(flags[first, 0])
        hint = "values exceed float16's range; use --save-dtype float32" if overflow else nonfinite_hint()
        raise ExtractionError(f"layer {spec.layer} {spec.pool}: non-storable features for {paths[which[0]]} "
                              f"(rows {which[:5]}): {hint}")
    return {spec.name: copy.per_image(spec) for spec in specs}


def _batch_features(encoding, specs: Sequence[ArraySpec], save_dtype, rows, paths,
                    nonfinite_hint: Callable[[], str]) -> dict[str, np.ndarray]:
    """The checked arrays of one batch, at once (the loop overlaps the two halves across batches)."""
    return _finish_copy_back(_start_copy_back(encoding, specs, save_dtype, rows), specs, paths, nonfinite_hint)


def _encode_share(out: Path, manifest: dict, batches, *, checkpoint, layers, norm, add_cls, compute_dtype,
                  device, preprocess: Preprocess, workers: int, strict: bool, progress: bool, rank: int,
                  commit_interval: float, packed_attention: str = "auto", bar=None,
                  encoder=None) -> tuple[int, int]:
    """Encode these batches of one folder and write them; returns (images processed, bytes written).

    ``bar``: a progress bar shared by several calls (not closed here); else ``progress`` makes one.
    ``encoder``: the model, when the caller keeps one for several folders (else it is loaded here)."""
    import torch

    from ..encoder import SailEncoder

    specs = _specs_from_manifest(manifest)
    paths = (out / PATHS_FILE).read_text(encoding="utf-8").split("\n")[: manifest["num_items"]]
    grids = np.load(out / PATCH_GRIDS_FILE)
    offsets = {s.name: np.load(out / s.offsets_file) for s in specs if s.offsets_file}
    save_dtype = {"float16": torch.float16, "float32": torch.float32}[manifest["settings"]["save_dtype"]]
    total = int(sum(len(b) for b in batches))
    if not batches:
        return 0, 0
    if encoder is None:
        encoder = SailEncoder.from_pretrained(checkpoint, dtype=compute_dtype, device=device, max_layer=max(layers),
                                              packed_attention=packed_attention)
    nonfinite_hint = functools.partial(_nonfinite_hint, checkpoint, max(layers), compute_dtype)
    loader = batch_loader(paths, preprocess, grids, batches, workers=workers, pin_memory=device.type == "cuda",
                          images=row_images(out, paths))
    iterator = iter(loader)  # starts the worker processes before the writer thread exists
    arrays = OutputArrays(out, specs, offsets)
    status = RowStatus(rank_status_file(out, rank))
    writer = BackgroundWriter(arrays, status, FailureLog(out / STATE_DIR / f"failures-rank{rank}.jsonl"),
                              commit_interval=commit_interval)
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    own_bar = bar is None and progress
    if own_bar:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="extracting", unit="img", dynamic_ncols=True, smoothing=0.05)
    processed = failed = 0
    in_flight = None  # the batch whose features are being copied back
    try:
        for item in iterator:
            records = [failure_record(row, paths[row], kind, detail) for row, kind, detail in item["failures"]]
            if records and strict:  # not recorded: the row stays pending, so --resume decodes it again
                if in_flight is not None:  # the batch before it is finished work: keep it
                    writer.put_batch(in_flight.rows, _finish_copy_back(in_flight, specs, paths, nonfinite_hint))
                first = records[0]
                raise ExtractionError(f"{first['path']}: {first['reason']} (--strict stops at the first bad "
                                      f"input; rows finished so far are kept: fix the file and --resume, or "
                                      f"run without --strict)")
            writer.put_failures(records)
            rows = item["rows"].numpy()
            started = None
            if item["pixels"] is not None:
                pixels = item["pixels"]
                if isinstance(pixels, list):  # a packed batch of images of different sizes
                    patches = [preprocess.to_patches(p.to(device, non_blocking=True)[None])[0] for p in pixels]
                    planned_as_one = sum(p.shape[0] * p.shape[1] + 3 for p in patches)  # the plan packed it already
                    encoding = encoder.encode_patches(patches, layers, norm=norm, add_cls=add_cls, packed_output=True,
                                                      max_batch_tokens=planned_as_one)
                else:
                    encoding = encoder.encode_patches(preprocess.to_patches(pixels.to(device, non_blocking=True)),
                                                      layers, norm=norm, add_cls=add_cls)
                started = _start_copy_back(encoding, specs, save_dtype, rows)
            # The previous batch is handed to the writer only now, after this one was queued on the
            # device: the GPU computes while the host waits for copies, checks and writes.
            if in_flight is not None:
                writer.put_batch(in_flight.rows, _finish_copy_back(in_flight, specs, paths, nonfinite_hint))
                pause_point("extract:encoding")
            in_flight = started
            processed += len(rows) + len(records)
            failed += len(records)
            if bar is not None:
                bar.update(len(rows) + len(records))
                if failed:
                    bar.set_postfix(failed=failed, refresh=False)
            if delay:
                time.sleep(delay)
        if in_flight is not None:
            writer.put_batch(in_flight.rows, _finish_copy_back(in_flight, specs, paths, nonfinite_hint))
            pause_point("extract:encoding")
    finally:
        if own_bar:
            bar.close()
        del iterator
        try:
            writer.close()
        finally:
            arrays.close()
            status.close()
    return processed, writer.bytes_written


# ---------------------------------------------------------------------------------- finishing
def _finalize(out: Path, manifest: dict, *, seconds: float, world_size: int, workers: int, device_type: str,
              resumed: bool) -> dict:
    state = out / STATE_DIR
    status = RowStatus.combined(status_files(out), manifest["num_items"])
    pending = int((status == PENDING).sum())
    if pending:
        raise ExtractionError(f"--out {out}: {pending} row(s) were not processed; rerun with --resume")
    records: dict[int, dict] = {}
    for log in [state / PLAN_FAILURES, *sorted(state.glob("failures-rank*.jsonl"))]:
        for record in FailureLog.read(log):
            records[record["index"]] = record
    paths = (out / PATHS_FILE).read_text(encoding="utf-8").split("\n")
    failures = []
    for row in np.flatnonzero(status == FAILED):
        failures.append(records.get(int(row)) or failure_record(int(row), paths[row], "unknown", "failed"))
    atomic_write_text(out / FAILURES_FILE, "".join(_json_line(r) for r in failures))
    valid = status == DONE
    atomic_save_npy(out / VALID_FILE, valid)
    pause_point("extract:finalize")
    manifest = {**manifest, "complete": True, "num_valid": int(valid.sum()), "num_failed": len(failures),
                "failures": {"file": FAILURES_FILE, "count": len(failures),
                             "by_kind": dict(sorted(Counter(r["kind"] for r in failures).items())),
                             "items": failures},
                "run": {"finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "seconds_last_session": round(seconds, 3), "world_size": world_size,
                        "workers": workers, "device_type": device_type, "resumed": resumed}}
    write_manifest(out, manifest)
    pause_point("extract:cleanup")
    remove_temporary_files(out)
    return manifest


def _label_summary(manifest: dict) -> str:
    return labels_summary((manifest.get("inputs") or {}).get("labels"))


def _output_bytes(out: Path, manifest: dict) -> int:
    return sum(f.stat().st_size for info in manifest["features"].values()
               for f in parted_files(out, manifest, info["file"]) or [out / info["file"]])


# ---------------------------------------------------------------------------------- parts
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
                           description={"part": part.describe()})
    if (work / PATHS_FILE).is_file() and has_spool(work / STATE_DIR):
        paths = (work / PATHS_FILE).read_text(encoding="utf-8").split("\n")[:-1]
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
    known = {row - first: ("duplicate", f"duplicate path: same as row {orig}; extracted once, at row {orig}")
             for row, orig in job.duplicates.items() if first <= row < first + count}
    with hold_folder(work, "sail-vision extract", option=f"part {part.name} of --out"):
        planner = _Planner(work, job.settings, {**job.manifest_base, "part": part.describe()}, job.preprocess,
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
        processed, _ = _encode_share(
            work, manifest, pending, checkpoint=job.checkpoint, layers=job.layers, norm=job.norm,
            add_cls=job.add_cls, compute_dtype=job.compute_dtype, device=job.device, preprocess=job.preprocess,
            workers=job.workers, strict=job.strict, progress=job.progress, rank=0,
            commit_interval=job.commit_interval, packed_attention=job.packed_attention, bar=bar,
            encoder=job.encoder() if pending else None)
        _finalize(work, manifest, seconds=time.monotonic() - started, world_size=1, workers=job.workers,
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


def _result(out: Path, manifest: dict, **extra) -> ExtractionResult:
    return ExtractionResult(out, manifest["num_items"], manifest["num_valid"], manifest["num_failed"],
                            manifest["failures"].get("items", []), output_bytes=_output_bytes(out, manifest),
                            labels=_label_summary(manifest), **extra)


# ---------------------------------------------------------------------------------- API
def extract(checkpoint: str | Path, images, out: str | Path, *, layers: int | Iterable[int] = (-1,),
            pools: str | Iterable[str] = ("mean",), norm: bool = False, resolution=None,
            max_tokens: int = DEFAULT_MAX_TOKENS, dtype: str | None = "auto", device=None, batch_size: int = 16,
            workers: int | None = None, resume: bool = False, overwrite: bool = False, save_dtype: str = "float16",
            limit: int | None = None, strict: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS,
            layout: str = "auto", split: str | None = None, labels_file: str | Path | None = None,
            progress: bool = True, commit_interval: float = 2.0, batching: str = "packed",
            max_batch_tokens: int | None = None, packed_attention: str = "auto",
            part_size: int = DEFAULT_PART_SIZE, num_tasks: int | None = None, task_index: int | None = None,
            finalize: bool = False, consolidate: bool = True, engine: str = "local", ray_address: str | None = None,
            ray_actors: int | None = None, ray_cpus_per_actor: int = 4) -> ExtractionResult:
    """Extract features of ``images`` with the SAIL checkpoint at ``checkpoint`` into ``out``.

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
    if resume and overwrite:
        raise InputError("pass either --resume or --overwrite, not both")
    if finalize and overwrite:
        raise InputError("--finalize joins finished parts; it cannot be combined with --overwrite")
    if save_dtype not in SAVE_DTYPES:
        raise InputError(f"--save-dtype {save_dtype!r}: choose float16 or float32")
    if batch_size <= 0:
        raise InputError(f"--batch-size must be positive, got {batch_size}")
    if part_size is None or part_size <= 0:
        raise InputError(f"--part-size must be positive, got {part_size}")
    if batching not in BATCHING:
        raise InputError(f"--batching {batching!r}: choose from {', '.join(BATCHING)}")
    if max_batch_tokens is not None and max_batch_tokens <= 0:
        raise InputError(f"--max-batch-tokens must be positive, got {max_batch_tokens}")
    if packed_attention not in PACKED_ATTENTION:
        raise InputError(f"--packed-attention {packed_attention!r}: choose from {', '.join(PACKED_ATTENTION)}")
    if not commit_interval > 0:
        raise InputError(f"--commit-interval must be positive, got {commit_interval}")
    if workers is None:
        workers = min(4, os.cpu_count() or 1)
    if workers < 0:
        raise InputError(f"--workers must be 0 or more, got {workers}")
    task_slice(num_tasks, task_index)  # a bad task option fails before any process group is joined
    if engine not in ENGINES:
        raise InputError(f"--engine {engine!r}: choose from {', '.join(ENGINES)}")
    if engine == "ray":
        from .ray_engine import require_ray

        require_ray()
        if num_tasks is not None or task_index is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise InputError("--engine ray schedules the parts itself; run it as one process, without torchrun "
                             "or --num-tasks / --task-index")
    pools = _normalise_pools(pools)
    device = resolve_device(device)
    if dtype not in (None, "auto"):
        _resolve_compute_dtype(dtype, device)  # a bad --dtype fails before any process group is joined
    ckpt = SailCheckpoint(checkpoint)
    cfg = ckpt.config
    layers = resolve_layer_indices(layers, cfg.num_hidden_layers)
    preprocess = Preprocess.create(cfg.vision_patch_size, resolution, max_tokens, max_pixels)
    out = Path(out).expanduser().absolute()
    if isinstance(images, (list, tuple)) and len(images) == 1:
        images = images[0]
    images_arg = ([str(Path(p).absolute()) for p in images] if isinstance(images, (list, tuple))
                  else _absolute_spec(str(images)))
    source_args = {"images": images_arg, "layout": layout, "split": split, "limit": limit,
                   "labels_file": str(Path(labels_file).absolute()) if labels_file else None}
    add_cls = "cls" in pools
    packed = batching == "packed" and preprocess.fixed_grid is None  # a fixed resolution has one grid

    def describe_run() -> tuple[dict, dict]:
        """(settings resume compares, manifest skeleton); rank 0 only: hashing the weights reads them all."""
        digest = weights_digest(ckpt, progress=progress)
        settings = {"config_fingerprint": cfg.fingerprint(), "weights_digest": digest, "layers": layers,
                    "pools": pools, "norm": bool(norm), "add_cls": add_cls, "preprocessing": preprocess.describe(),
                    "dtype": compute_dtype, "save_dtype": save_dtype, "batch_size": int(batch_size),
                    "batching": "packed" if packed else "grouped", "inputs": source_args,
                    "part_size": int(part_size)}
        if packed:
            settings["max_batch_tokens"] = max_batch_tokens  # None: batch_size x the longest sequence
            settings["packed_attention"] = packed_kernel
        attention = describe_attention("sdpa", device.type, compute_dtype,
                                       cfg.num_attention_heads // cfg.num_key_value_heads)
        if packed:
            attention += f"; images of different sizes packed, block-diagonal attention: {packed_kernel}"
        manifest_base = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "complete": False, "num_items": 0,
            "num_layers": cfg.num_hidden_layers, "hidden_size": cfg.hidden_size, "layers": layers, "pools": pools,
            "features": {}, "valid": VALID_FILE, "labels": None, "classes": None, "paths": PATHS_FILE,
            "patch_grids": PATCH_GRIDS_FILE, "failures": {"file": FAILURES_FILE, "count": None},
            "checkpoint": {"path": str(Path(checkpoint).absolute()), "config_fingerprint": cfg.fingerprint(),
                           "weights_digest": digest, "config": cfg.to_dict()},
            "preprocessing": {**preprocess.describe(), "norm": bool(norm), "add_cls": add_cls,
                              "resize": "bilinear", "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
            "dtypes": {"compute": compute_dtype, "save": save_dtype},
            "attention": attention,
            "settings": settings, "software": _software_versions(),
        }
        return settings, manifest_base

    dist, device = DistContext.setup(device)
    tasks = task_slice(num_tasks, task_index, rank=dist.rank, world_size=dist.world_size)
    # A single run (one process or one torchrun job) holds the folder for its whole life; the tasks of
    # a task array share it: each holds it only while planning or joining, and holds its parts.
    shared = tasks.is_task_array or finalize
    lock = contextlib.ExitStack()
    try:
        compute_dtype = _resolve_compute_dtype(dtype, device)
        packed_kernel = resolve_packed_attention(packed_attention, device, resolve_dtype(compute_dtype))
        outcome = None
        if dist.is_main:
            try:
                with contextlib.ExitStack() as planning:
                    target = planning if shared else lock
                    target.enter_context(hold_folder(out, "sail-vision extract", wait=600 if shared else 0))
                    settings, manifest_base = describe_run()
                    planner = _DatasetPlanner(out, settings, manifest_base, lambda: resolve_inputs(**source_args),
                                              part_size=part_size, progress=progress)
                    if finalize and not (out / MANIFEST_FILE).is_file():
                        raise ExtractionError(f"--out {out}: nothing to finalize (no {MANIFEST_FILE}); run the "
                                              f"extraction first")
                    outcome = planner.prepare(resume=resume or shared, overwrite=overwrite)
            except Exception as exc:
                dist.broadcast(("error", str(exc)))
                raise
        outcome = dist.broadcast(outcome)
        if isinstance(outcome, tuple):
            raise ExtractionError(f"rank 0 could not start: {outcome[1]}")
        manifest = read_manifest(out)
        if outcome == "complete":
            if consolidate and dist.is_main and not (manifest.get("parts") or {}).get("consolidated", True):
                with contextlib.ExitStack() as joining:  # a join that was interrupted, or asked for now
                    if shared:
                        joining.enter_context(hold_folder(out, "sail-vision extract", wait=600))
                    manifest = join_features(out)
            dist.barrier()
            manifest = read_manifest(out)
            return _result(out, manifest, already_complete=True, world_size=dist.world_size)
        parts = parts_from_manifest(manifest)
        flat = all(p.shard is None for p in parts)
        paths = (out / PATHS_FILE).read_text(encoding="utf-8").split("\n")[: manifest["num_items"]] if flat else None
        labels = np.load(out / LABELS_FILE) if flat and manifest.get("labels") else None
        job = _PartJob(out, manifest["settings"], {k: v for k, v in manifest.items() if k != "parts"}, preprocess,
                       _SourceLoader(source_args), paths, labels,
                       manifest.get("classes"), find_duplicates(paths) if flat else {}, checkpoint, layers,
                       bool(norm), add_cls, compute_dtype, device, cfg.hidden_size, int(batch_size), packed,
                       max_batch_tokens, packed_attention, workers, strict, progress and dist.is_main,
                       commit_interval, labels_expected=bool(manifest.get("labels")))
        todo = [] if finalize else [p for p in tasks.parts_for(parts) if not is_committed(out, p)]
        failure, processed = None, 0
        try:
            if engine == "ray" and todo:
                from .ray_engine import extract_parts_on_ray

                processed, _ = extract_parts_on_ray(job, todo, address=ray_address, actors=ray_actors,
                                                    cpus_per_actor=ray_cpus_per_actor)
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
            with contextlib.ExitStack() as joining:
                if shared:
                    joining.enter_context(hold_folder(out, "sail-vision extract", wait=600))
                manifest = read_manifest(out)
                if not manifest.get("complete"):
                    manifest = finish_dataset(out, manifest, {
                        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "seconds_last_session": round(seconds, 3), "world_size": dist.world_size,
                        "num_tasks": tasks.num_tasks, "workers": workers, "device_type": device.type},
                        join=consolidate)
                    remove_temporary_files(out)
                elif consolidate:
                    manifest = join_features(out, manifest)
        dist.barrier()
        manifest = read_manifest(out)
        if not manifest.get("complete"):
            if finalize:
                raise ExtractionError(f"--out {out}: cannot finalize: {len(waiting)} part(s) not finished "
                                      f"({', '.join(waiting[:5])}{' ...' if len(waiting) > 5 else ''}); run the "
                                      f"tasks that own them again, then --finalize")
            return ExtractionResult(out, manifest["num_items"], 0, 0, seconds=seconds, images_processed=processed,
                                    world_size=dist.world_size, parts_waiting=len(waiting),
                                    parts_total=len(parts))
        return _result(out, manifest, seconds=seconds, images_processed=processed, world_size=dist.world_size)
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
