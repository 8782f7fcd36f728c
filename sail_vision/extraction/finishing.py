"""Finishing: a part's own files and manifest once its rows are done, then the dataset once every
part is committed (the small per-row files joined at once, the feature arrays by :func:`join_features`)."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..feature_store import (FAILURES_FILE, LABELS_FILE, MASK_PATHS_FILE, PARTS_DIR, PATCH_GRIDS_FILE, PATHS_FILE,
                             STATE_DIR, VALID_FILE, FeatureStoreError, atomic_file, atomic_save_npy, atomic_write_text,
                             check_free_space, count_lines, npy_header, read_failures, read_lines, read_manifest,
                             refuse_foreign_part_entries, remove_parts, remove_temporary_files, unallocated_bytes,
                             write_lines, write_manifest)
from ..pause_points import pause_point
from .parts import Part, is_committed, parts_from_manifest
from .planning import PLAN_FAILURES, changed_settings, json_line, status_files
from .results import ExtractionError
from .writer import DONE, FAILED, PENDING, RowFile, create_array_file, failure_record, FailureLog, RowStatus


def _write_failures(out: Path, failures: Sequence[dict]) -> dict:
    """Write ``failures.jsonl`` (one record per line, sorted keys) and return the manifest's ``failures`` entry."""
    atomic_write_text(out / FAILURES_FILE, "".join(json_line(r) for r in failures))
    return {"file": FAILURES_FILE, "count": len(failures),
            "by_kind": dict(sorted(Counter(r["kind"] for r in failures).items())), "items": list(failures)}


def finish_part(out: Path, manifest: dict, *, seconds: float, world_size: int, workers: int, device_type: str,
                resumed: bool) -> dict:
    """Write a part's ``valid.npy``, ``failures.jsonl`` and finished manifest once no row is pending."""
    state = out / STATE_DIR
    status = RowStatus.combined(status_files(out), manifest["num_items"])
    pending = int((status == PENDING).sum())
    if pending:
        raise ExtractionError(f"--out {out}: {pending} row(s) were not processed; rerun with --resume")
    records: dict[int, dict] = {}
    for log in [state / PLAN_FAILURES, *sorted(state.glob("failures-rank*.jsonl"))]:
        for record in FailureLog.read(log):
            records[record["index"]] = record
    paths = read_lines(out / PATHS_FILE, manifest["num_items"])
    failures = []
    for row in np.flatnonzero(status == FAILED):
        failures.append(records.get(int(row)) or failure_record(int(row), paths[row], "unknown", "failed"))
    failures_entry = _write_failures(out, failures)
    valid = status == DONE
    atomic_save_npy(out / VALID_FILE, valid)
    pause_point("extract:finalize")
    manifest = {**manifest, "complete": True, "num_valid": int(valid.sum()), "num_failed": len(failures),
                "failures": failures_entry,
                "run": {"finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                        "seconds_last_session": round(seconds, 3), "world_size": world_size,
                        "workers": workers, "device_type": device_type, "resumed": resumed}}
    write_manifest(out, manifest)
    pause_point("extract:cleanup")
    remove_temporary_files(out)
    return manifest


def finish_dataset(out: Path, manifest: dict, extra_run: Mapping | None = None, *, join: bool = True) -> dict:
    """Finish the dataset manifest of ``out`` once every part is committed, and (``join``) join them.

    ``manifest`` is the dataset manifest written at planning (``"complete": false``, the part
    list). The small per-row files (paths, labels, validity, patch grids, row offsets, mask paths and
    offsets, failures) are joined at once; the feature arrays and ``masks.npy`` stay in the parts (``"parts": {"consolidated": false}``,
    read lazily by ``open_feature_dir``) until :func:`join_features` writes the single files.
    Re-running after an interruption at any point finishes the job.
    """
    parts = parts_from_manifest(manifest)
    folders = [p.folder(out) for p in parts]
    missing = [p.name for p, f in zip(parts, folders) if not is_committed(out, p)]
    if missing:
        raise FeatureStoreError(f"{out}: part(s) {', '.join(missing[:5])} are not finished; run the remaining "
                                f"tasks (or the same command with --resume), then --finalize")
    part_manifests = [read_manifest(f) for f in folders]
    for part, folder, part_manifest in zip(parts, folders, part_manifests):
        _check_part_origin(folder, part, part_manifest, manifest)
    counts = [int(m["num_items"]) for m in part_manifests]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
    for part, start, count in zip(parts, starts, counts):
        if part.first_row is not None and (part.first_row, part.num_rows) != (start, count):
            raise FeatureStoreError(f"{part.folder(out)}: holds {count} rows from row {start}, but the dataset "
                                    f"manifest planned {part.num_rows} from row {part.first_row}; re-extract "
                                    f"with --overwrite")
    failures = [r for start, folder in zip(starts, folders) for r in _shifted_failures(folder, start)]
    # The listing and labels of the whole dataset, from the parts (a shard's rows are known only there).
    for folder, count in zip(folders, counts):
        lines = count_lines(folder / PATHS_FILE)
        if lines != count:
            raise FeatureStoreError(f"{folder}: {PATHS_FILE} has {lines} line(s) for {count} row(s); remove this "
                                    f"part's folder and rerun the same command with --resume to extract it again")
    write_lines(out / PATHS_FILE, [line for f in folders for line in read_lines(f / PATHS_FILE)])
    if manifest.get("labels"):
        atomic_save_npy(out / LABELS_FILE, np.concatenate([np.load(f / LABELS_FILE) for f in folders]))
    masks = manifest.get("masks")
    if masks:  # the label maps themselves are large: joined with the feature arrays
        write_lines(out / MASK_PATHS_FILE, [line for f in folders for line in read_lines(f / MASK_PATHS_FILE)])
        if masks.get("offsets"):
            _join_arrays(out / masks["offsets"], [f / masks["offsets"] for f in folders], shift_offsets=True)
    failures_entry = _write_failures(out, failures)
    _join_arrays(out / VALID_FILE, [f / VALID_FILE for f in folders])
    _join_arrays(out / PATCH_GRIDS_FILE, [f / PATCH_GRIDS_FILE for f in folders])
    entries = {}
    for name, info in part_manifests[0]["features"].items():
        shapes = [m["features"][name]["shape"] for m in part_manifests]
        entries[name] = {**info, "shape": [sum(s[0] for s in shapes), *shapes[0][1:]]}
        if info.get("offsets"):
            _join_arrays(out / info["offsets"], [f / info["offsets"] for f in folders], shift_offsets=True)
    valid = np.load(out / VALID_FILE, mmap_mode="r")
    runs = [m.get("run") or {} for m in part_manifests]
    finished = {
        **manifest, "complete": True, "num_items": sum(counts), "features": entries,
        "num_valid": int(np.count_nonzero(valid)), "num_failed": len(failures),
        "failures": failures_entry,
        "parts": {**manifest["parts"], "consolidated": False,
                  "items": [{**item, "first_row": start, "num_rows": count}
                            for item, start, count in zip(manifest["parts"]["items"], starts, counts)]},
        "run": {**(runs[-1] if runs else {}), **(extra_run or {})},
    }
    pause_point("extract:finalize")
    write_manifest(out, finished)
    return join_features(out, finished) if join else finished


def _check_part_origin(folder: Path, part: Part, part_manifest: dict, manifest: dict) -> None:
    """A committed part belongs to this extraction: same settings, same rows (or shard)."""
    differ = changed_settings(part_manifest.get("settings"), manifest.get("settings"))
    described = part_manifest.get("part") or {}
    wanted = part.describe()
    if differ or any(described.get(k) != v for k, v in wanted.items() if v is not None):
        what = f"settings differ: {', '.join(differ)}" if differ else f"it holds {described or 'unknown rows'}"
        raise FeatureStoreError(f"{folder}: this part comes from another extraction ({what}); remove the folder "
                                f"and rerun the same command with --resume to extract it again")


def join_features(out: Path, manifest: dict | None = None) -> dict:
    """Write the single ``layer-{k}_{pool}.npy`` files (and ``masks.npy``) of a finished, parted folder and
    remove ``parts/``; on a folder already joined, finish what an interrupted run left (``parts/``,
    temporary files).

    One part's files are hard-linked into place (no copy; copied where links are not possible),
    several parts' are copied in chunks through temporary files (memory stays flat); a file joined
    by an interrupted run is kept. Until the manifest says ``"consolidated": true`` readers use the
    parts, so the folder reads correctly at every moment, and an interrupted join is simply run
    again. Files under ``parts/`` that sail-vision did not write are refused by name before anything
    is written or removed.
    """
    manifest = read_manifest(out) if manifest is None else manifest
    parts_info = manifest.get("parts") or {}
    if manifest.get("complete") is not True:
        raise FeatureStoreError(f"{out}: the extraction is unfinished; finish it first (the same "
                                f"`sail-vision extract` command with --resume, or --finalize after a task array)")
    refuse_foreign_part_entries(out)
    if parts_info.get("consolidated", True):
        finish_cleanup(out)
        return manifest
    todo = joins_to_write(out, manifest)
    check_free_space(out, sum(size for _, _, size in todo) if len(parts_info["items"]) > 1 else 0,
                     option="folder", what="joining the parts")
    for info, sources, _ in todo:
        if len(sources) == 1:
            _link_or_copy(sources[0], out / info["file"])
        else:
            _join_arrays(out / info["file"], sources)
        pause_point("extract:consolidate")
    joined = {**manifest, "parts": {**parts_info, "consolidated": True}}
    write_manifest(out, joined)
    pause_point("extract:joined")
    finish_cleanup(out)
    return joined


def finish_cleanup(out: Path) -> None:
    """The last step of a consolidated folder: ``parts/`` and the working files removed (repeatable)."""
    remove_parts(out)
    remove_temporary_files(out)


def joins_to_write(out: Path, manifest: dict) -> list[tuple[dict, list[Path], int]]:
    """(manifest entry, part files, bytes) of each array a join still has to write: the features and
    ``masks.npy``, less those an interrupted join already put in place (same shape and dtype)."""
    folders = [out / PARTS_DIR / item["name"] for item in manifest["parts"]["items"]]
    todo = []
    for info in [*manifest["features"].values(), *([manifest["masks"]] if manifest.get("masks") else [])]:
        sources = [f / info["file"] for f in folders]
        headers = [npy_header(f) for f in sources]
        shape = (sum(h[0][0] for h in headers), *headers[0][0][1:])
        size = int(np.prod(shape, dtype=np.int64)) * headers[0][1].itemsize
        target = out / info["file"]
        if target.is_file() and npy_header(target) == (shape, headers[0][1]):
            continue
        todo.append((info, sources, size))
    return todo


def space_to_finish(out: Path, manifest: dict, *, consolidate: bool) -> int:
    """Bytes the disk of ``out`` still has to take before the extraction is finished: the unwritten
    blocks of parts being extracted, the parts not started (estimated from the bytes per row of the
    others) and, when several parts are joined, the joined copy."""
    parts = parts_from_manifest(manifest)
    known_bytes, known_rows, unwritten, unplanned_rows = 0, 0, 0, 0
    for part in parts:
        folder = part.folder(out) if is_committed(out, part) else part.work_folder(out)
        try:
            part_manifest = read_manifest(folder)
            files = [info["file"] for info in part_manifest["features"].values()]
            files += [part_manifest["masks"]["file"]] if part_manifest.get("masks") else []
            sizes = [(folder / f).stat().st_size for f in files]
        except (FeatureStoreError, OSError, KeyError, TypeError):
            unplanned_rows += part.num_rows or 0
            continue
        known_bytes += sum(sizes)
        known_rows += int(part_manifest["num_items"])
        unwritten += sum(unallocated_bytes(folder / f) for f in files)
    estimated = (known_bytes * unplanned_rows // known_rows if known_rows
                 else unplanned_rows * _row_bytes_before_planning(manifest))
    joined = known_bytes + estimated if consolidate and len(parts) > 1 else 0
    return unwritten + estimated + joined


def _row_bytes_before_planning(manifest: dict) -> int:
    """Bytes per row of the feature and mask files, as far as the settings alone say: exact for pooled
    features and a fixed resolution; native-resolution patch rows and masks (their sizes come from the
    images) count for nothing, so the estimate is a lower bound."""
    settings = manifest.get("settings") or {}
    itemsize = 2 if settings.get("save_dtype", "float16") == "float16" else 4
    hidden = int(manifest.get("hidden_size") or 0)
    resolution = (settings.get("preprocessing") or {}).get("resolution")
    patch = int((settings.get("preprocessing") or {}).get("patch_size") or 1)
    pixels = (resolution * resolution if isinstance(resolution, int)
              else resolution[0] * resolution[1] if isinstance(resolution, list) else 0)
    per_layer = sum(hidden * itemsize * (pixels // (patch * patch) if pool == "patch" else 1)
                    for pool in settings.get("pools") or [])
    masks = pixels * np.dtype(manifest["masks"].get("dtype", "uint8")).itemsize if manifest.get("masks") else 0
    return per_layer * len(settings.get("layers") or []) + masks


def _link_or_copy(source: Path, target: Path) -> None:
    with atomic_file(target) as tmp:
        tmp.unlink()
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def _shifted_failures(folder: Path, first_row: int) -> list[dict]:
    return [{**record, "index": record["index"] + first_row} for record in read_failures(folder / FAILURES_FILE)]


def _join_arrays(target: Path, sources: Sequence[Path], *, shift_offsets: bool = False) -> None:
    """Write the first-axis concatenation of ``sources`` to ``target`` through a temporary file.

    With ``shift_offsets`` the sources are (n_i + 1,) row offsets: each part's are shifted by the
    rows before it and their leading zeros dropped, except the first.
    """
    arrays = [np.load(s, mmap_mode="r") for s in sources]
    if shift_offsets:
        pieces, base = [np.zeros(1, np.int64)], 0
        for offsets in arrays:
            pieces.append(np.asarray(offsets[1:], dtype=np.int64) + base)
            base += int(offsets[-1])
        atomic_save_npy(target, np.concatenate(pieces))
        return
    shape = (sum(a.shape[0] for a in arrays), *arrays[0].shape[1:])
    with atomic_file(target) as tmp:
        create_array_file(tmp, shape, arrays[0].dtype)
        out = RowFile(tmp)
        try:
            row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * arrays[0].dtype.itemsize)
            step = max(1, COPY_CHUNK_BYTES // row_bytes)
            row = 0
            for array in arrays:
                for start in range(0, array.shape[0], step):
                    out.write(row + start, np.asarray(array[start:start + step]))
                row += array.shape[0]
            out.sync()
        finally:
            out.close()


#: Copy at most this many bytes at a time when several parts are joined.
COPY_CHUNK_BYTES = 64 << 20
