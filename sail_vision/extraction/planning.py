"""Planning: the dataset's listing cut into parts, and each part's own plan (patch grids,
preallocated files, a per-row status file). Resuming checks settings and inputs against both."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..feature_store import (LABELS_FILE, MANIFEST_FILE, MASK_PATHS_FILE, PATCH_GRIDS_FILE, PATHS_FILE, STATE_DIR,
                             atomic_save_npy, atomic_write_text, check_free_space, extraction_entries, feature_name,
                             FeatureStoreError, mask_manifest_entry, offsets_file_name, read_lines, read_manifest,
                             remove_extraction_files, remove_temporary_files, unallocated_bytes, write_lines,
                             write_manifest)
from ..pause_points import pause_point
from ..preprocessing import Preprocess
from ..sources import ImageSource
from .loader import NO_GRID, scan_grids
from .parts import Part, plan_parts
from .results import ExtractionError
from .spool import has_spool, SpooledImages
from .writer import ArraySpec, create_array_file, failure_record, RowStatus


PLAN_STATUS = "status-plan.npy"

PLANNED_MARK = "planned"

PLAN_FAILURES = "failures-plan.jsonl"

#: The listing's own verdicts on rows (an unreadable sub-folder, an image without its mask, ...), kept
#: by the dataset's planning for the parts (``{row: [kind, detail]}``).
LISTING_ERRORS = "listing-errors.json"


def mask_spec(entry: dict | None, num_items: int, fixed_grid, patch_size: int, total_patches: int) -> ArraySpec | None:
    """The ``masks.npy`` of a part (its manifest ``"masks"`` entry), or None without masks."""
    if not entry:
        return None
    if entry["layout"] == "grid":
        shape = (num_items, fixed_grid[0] * patch_size, fixed_grid[1] * patch_size)
    else:
        shape = (total_patches * patch_size * patch_size,)
    return ArraySpec("masks", entry["file"], shape, entry.get("dtype", "uint8"), entry["layout"], -1, "mask",
                     entry.get("offsets"))


def target_rules(entry: dict | None) -> dict | None:
    """How each row's dense target is decoded (keyword arguments of ``Preprocess.pixels_and_mask``), from
    the manifest's ``"masks"`` entry; None without one."""
    if not entry:
        return None
    if entry.get("kind") == "depth":
        return {"depth_scale": float(entry["depth_scale"])}
    return {"reduce_zero_label": bool(entry.get("reduce_zero_label")), "num_classes": entry.get("num_classes")}


def dataset_mask_entry(source: ImageSource, native: bool) -> dict | None:
    """The dataset manifest's ``"masks"`` entry for a source with label maps or depth maps, else None."""
    if getattr(source, "masks", None) is None:
        return None
    depth = source.description.get("depth")
    if depth:
        return mask_manifest_entry(native, depth_scale=depth["depth_scale"])
    rules = source.description.get("segmentation") or {}
    return mask_manifest_entry(native, reduce_zero_label=bool(rules.get("reduce_zero_label")),
                               num_classes=rules.get("num_classes"), classes=source.classes)


def mask_lines(masks: Sequence[str | None]) -> list[str]:
    """The lines of ``mask_paths.txt``: one mask path per row, empty for a row without one."""
    return [m or "" for m in masks]


def changed_settings(before: dict | None, now: dict | None) -> list[str]:
    """The setting names whose values differ between two manifests' ``settings``, sorted."""
    before, now = before or {}, now or {}
    return sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))


def feature_specs(layers: Sequence[int], pools: Sequence[str], hidden: int, num_items: int,
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


def specs_from_manifest(manifest: dict) -> list[ArraySpec]:
    return [ArraySpec(name, info["file"], tuple(info["shape"]), info["dtype"], info["layout"], info["layer"],
                      info["pool"], info.get("offsets")) for name, info in manifest["features"].items()]


class PartPlanner:
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
        files = [info["file"] for info in manifest["features"].values()]
        files += [manifest["masks"]["file"]] if manifest.get("masks") else []
        check_free_space(self.out, sum(unallocated_bytes(self.out / file) for file in files))

    def _check_same_settings(self, manifest: dict) -> None:
        before = manifest.get("settings") or {}
        changed = changed_settings(before, self.settings)
        if changed:
            details = "; ".join(f"{k}: was {before.get(k)!r}, now {self.settings.get(k)!r}" for k in changed)
            raise ExtractionError(f"--out {self.out}: cannot resume with different settings ({details}); rerun "
                                  f"with the original options, or pass --overwrite to start again")

    def _check_same_inputs(self) -> None:
        source = self._source()
        if read_lines(self.out / PATHS_FILE) != list(source.paths):
            raise ExtractionError(f"--out {self.out}: the input images changed since this extraction started "
                                  f"(the list differs from {PATHS_FILE}); pass --overwrite to start again")
        masks_file = self.out / MASK_PATHS_FILE
        if masks_file.is_file() and getattr(source, "masks", None) is not None:
            if read_lines(masks_file) != mask_lines(source.masks):
                raise ExtractionError(f"--out {self.out}: the masks paired with the images changed since this "
                                      f"extraction started (the list differs from {MASK_PATHS_FILE}); pass "
                                      f"--overwrite to start again")

    def _plan(self) -> None:
        source = self._source()
        paths = source.paths
        num_items = len(paths)
        known = {**source.errors, **self.known_failures}  # rows the listing itself found unusable
        failures: dict[int, dict] = {row: failure_record(row, paths[row], kind, detail)
                                     for row, (kind, detail) in sorted(known.items())}
        grids = np.zeros((num_items, 2), dtype=np.int32)
        fixed = self.preprocess.fixed_grid
        masks_entry = self.manifest_base.get("masks")
        if masks_entry:
            for row, mask in enumerate(source.masks or [None] * num_items):
                if mask is None and row not in failures:
                    failures[row] = failure_record(row, paths[row], "mask-missing", "no mask was paired with this "
                                                                                    "image when the inputs were listed")
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
        specs = feature_specs(self.settings["layers"], self.settings["pools"], self.hidden, num_items, fixed,
                               int(offsets[-1]), self.settings["save_dtype"])
        masks = mask_spec(masks_entry, num_items, fixed, self.preprocess.patch_size, int(offsets[-1]))
        allocated = specs + ([masks] if masks else [])

        check_free_space(self.out, sum(int(np.prod(s.shape)) * s.nbytes_per_value for s in allocated))
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
        if masks is not None:
            create_array_file(self.out / masks.file, masks.shape, masks.dtype)
            if masks.offsets_file:
                atomic_save_npy(self.out / masks.offsets_file, offsets * self.preprocess.patch_size ** 2)
            write_lines(self.out / MASK_PATHS_FILE, mask_lines(source.masks))
        atomic_save_npy(self.out / PATCH_GRIDS_FILE, grids)
        if source.labels is not None:
            atomic_save_npy(self.out / LABELS_FILE, source.labels.astype(np.int64))
        write_lines(self.out / PATHS_FILE, paths)
        atomic_write_text(self.state / PLAN_FAILURES,
                          "".join(json_line(failures[r]) for r in sorted(failures)))
        RowStatus.create(self.state / PLAN_STATUS, num_items, sorted(failures))
        atomic_write_text(self.state / PLANNED_MARK, "")


class DatasetPlanner(PartPlanner):
    """The dataset level: list the inputs once (``paths.txt``, ``labels.npy``) and cut them into parts.

    Patch grids are scanned, and files preallocated, by each part's own :class:`PartPlanner`.
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
        masks = dataset_mask_entry(source, self.settings["preprocessing"]["resolution"] == "native")
        manifest = {**self.manifest_base, "num_items": len(source.paths) if shards is None else None,
                    "labels": LABELS_FILE if labelled else None, "masks": masks,
                    "classes": source.classes, "inputs": source.description,
                    "parts": {"part_size": self.part_size if shards is None else None, "count": len(parts),
                              "consolidated": False, "items": [p.describe() for p in parts]}}
        write_manifest(self.out, manifest)  # "complete": false from the first moment
        if shards is None:
            if source.labels is not None:
                atomic_save_npy(self.out / LABELS_FILE, source.labels.astype(np.int64))
            write_lines(self.out / PATHS_FILE, source.paths)
            if masks is not None:
                write_lines(self.out / MASK_PATHS_FILE, mask_lines(source.masks))
            atomic_write_text(self.state / LISTING_ERRORS, json.dumps(
                {str(row): list(error) for row, error in sorted(source.errors.items())}))
        atomic_write_text(self.state / PLANNED_MARK, "")


#: The number of tasks of the task array (or 1) that started an extraction, kept while it runs.
TASK_COUNT = "num-tasks"


def check_task_count(out: Path, num_tasks: int) -> None:
    """Record how many tasks share ``out`` on the first start; refuse a task array of another size later
    (its tasks would split the parts differently). A single process may always finish a folder."""
    file = out / STATE_DIR / TASK_COUNT
    if not file.is_file():
        if (out / STATE_DIR).is_dir():
            atomic_write_text(file, str(num_tasks))
        return
    started = int(file.read_text(encoding="utf-8").strip() or 0)
    if num_tasks > 1 and started != num_tasks:
        raise ExtractionError(f"--num-tasks {num_tasks}: --out {out} was started by "
                              f"{'a task array of ' + str(started) + ' tasks' if started > 1 else 'a single process'}"
                              f"; run every task with --num-tasks {started}"
                              f"{'' if started > 1 else ' (leave --num-tasks out)'}, or finish it with --finalize")


def listing_errors(out: Path) -> dict[int, tuple[str, str]]:
    """The rows the dataset's listing found unusable, for the parts."""
    file = out / STATE_DIR / LISTING_ERRORS
    if not file.is_file():
        return {}
    return {int(row): (kind, detail) for row, (kind, detail) in json.loads(file.read_text(encoding="utf-8")).items()}


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


def json_line(record: dict) -> str:
    return json.dumps(record, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------------- encoding
