"""Parts: the unit of work, of resume and of output of an extraction.

The ordered inputs are cut into *parts* of ``part_size`` rows (the last one shorter). Each part is
extracted into ``parts/.part-NNNNN.partial/`` as a complete feature folder of its own (its own
manifest, row-level resume, failures), and committed by renaming it to ``parts/part-NNNNN/``. A
part depends only on its own rows, so any split of the parts between processes, machines and
reruns gives the same bytes. When every part is committed, :func:`consolidate` writes the single
``layer-{k}_{pool}.npy`` files of the whole dataset and removes ``parts/``.

Who does which part: :func:`parts_for` takes the parts of one task of a task array
(``--num-tasks`` / ``--task-index``, by default from Slurm's ``SLURM_ARRAY_TASK_COUNT`` /
``SLURM_ARRAY_TASK_ID``) and, within it, of one torchrun rank.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..feature_store import (FAILURES_FILE, LABELS_FILE, MANIFEST_FILE, PARTS_DIR, PATCH_GRIDS_FILE, PATHS_FILE,
                             VALID_FILE, FeatureStoreError,
                             _fsync_dir, atomic_save_npy, atomic_write_text, read_manifest, write_manifest)
from ..pause_points import pause_point
from .writer import _RowFile, create_array_file

#: Rows per part unless ``--part-size`` says otherwise (a sharded input's shards are parts of their own).
DEFAULT_PART_SIZE = 10_000
#: Copy at most this many bytes at a time when several parts are joined.
COPY_CHUNK_BYTES = 64 << 20


@dataclass(frozen=True)
class Part:
    """Rows ``first_row .. first_row + num_rows - 1`` of the dataset, or every record of input shard
    ``shard`` (read from ``url``; its rows are counted when it is read, so both numbers are None)."""

    index: int
    first_row: int | None
    num_rows: int | None
    shard: str | None = None
    url: str | None = None

    @property
    def name(self) -> str:
        return f"part-{self.index:05d}"

    def folder(self, out: Path) -> Path:
        """Where the committed part lives."""
        return out / PARTS_DIR / self.name

    def work_folder(self, out: Path) -> Path:
        """Where the part is extracted before it is committed."""
        return out / PARTS_DIR / f".{self.name}.partial"

    def describe(self) -> dict:
        if self.shard is not None:
            return {"name": self.name, "shard": self.shard, "url": self.url}
        return {"name": self.name, "first_row": self.first_row, "num_rows": self.num_rows}


def plan_parts(num_items: int, part_size: int) -> list[Part]:
    """Consecutive parts of ``part_size`` rows covering ``num_items`` rows (at least one part)."""
    if part_size <= 0:
        raise InputError(f"--part-size must be positive, got {part_size}")
    starts = range(0, max(num_items, 1), part_size)
    return [Part(i, start, min(part_size, num_items - start)) for i, start in enumerate(starts)]


def parts_from_manifest(manifest: Mapping) -> list[Part]:
    parts = []
    for i, item in enumerate(manifest["parts"]["items"]):
        if item.get("shard") is not None:
            parts.append(Part(i, None, None, shard=item["shard"], url=item.get("url")))
        else:
            parts.append(Part(i, int(item["first_row"]), int(item["num_rows"])))
    return parts


@dataclass(frozen=True)
class TaskSlice:
    """This process's share: task ``task_index`` of ``num_tasks`` (a task array), rank ``rank`` of
    ``world_size`` within it (torchrun)."""

    num_tasks: int = 1
    task_index: int = 0
    rank: int = 0
    world_size: int = 1

    @property
    def is_task_array(self) -> bool:
        return self.num_tasks > 1

    def parts_for(self, parts: Sequence[Part]) -> list[Part]:
        """Part i belongs to task i mod num_tasks, and within the task to rank (i div num_tasks) mod world_size."""
        mine = list(parts)[self.task_index::self.num_tasks]
        return mine[self.rank::self.world_size]


def task_slice(num_tasks: int | None, task_index: int | None, *, rank: int = 0, world_size: int = 1,
               environ: Mapping[str, str] = os.environ) -> TaskSlice:
    """The task array position from the options, else from Slurm's variables, else a single task."""
    def from_env(name: str) -> int | None:
        text = environ.get(name)
        if text in (None, ""):
            return None
        try:
            return int(text)
        except ValueError:
            raise InputError(f"{name}={text!r} is not an integer; unset it or pass --num-tasks/--task-index") from None

    if num_tasks is None and task_index is None:
        num_tasks, task_index = from_env("SLURM_ARRAY_TASK_COUNT"), from_env("SLURM_ARRAY_TASK_ID")
        if num_tasks is not None and task_index is not None:
            minimum = from_env("SLURM_ARRAY_TASK_MIN") or 0
            task_index -= minimum  # arrays may start at 1 (--array=1-8)
        elif num_tasks is None and task_index is None:
            return TaskSlice(1, 0, rank, world_size)
    if num_tasks is None or task_index is None:
        raise InputError("pass both --num-tasks and --task-index (or neither)")
    if num_tasks <= 0:
        raise InputError(f"--num-tasks must be positive, got {num_tasks}")
    if not 0 <= task_index < num_tasks:
        raise InputError(f"--task-index {task_index}: must be between 0 and --num-tasks - 1 = {num_tasks - 1}")
    return TaskSlice(num_tasks, task_index, rank, world_size)


# ---------------------------------------------------------------------------------- committing
def is_committed(out: Path, part: Part) -> bool:
    """True when the part's folder is committed with a finished manifest."""
    folder = part.folder(out)
    if not (folder / MANIFEST_FILE).is_file():
        return False
    try:
        return read_manifest(folder).get("complete") is True
    except FeatureStoreError:
        return False


def commit_part(out: Path, part: Part) -> None:
    """Rename the finished work folder to the part's own name (atomic; a part another process
    committed first is kept and this copy, identical by construction, removed)."""
    work, final = part.work_folder(out), part.folder(out)
    pause_point("extract:commit-part")
    try:
        os.rename(work, final)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and is_committed(out, part):
            shutil.rmtree(work, ignore_errors=True)
        elif exc.errno == errno.ENOENT and is_committed(out, part):
            pass
        else:
            raise
    _fsync_dir(final.parent)


# ---------------------------------------------------------------------------------- consolidating
def _shifted_failures(folder: Path, first_row: int) -> list[dict]:
    records = []
    file = folder / FAILURES_FILE
    for line in file.read_text(encoding="utf-8").splitlines() if file.is_file() else []:
        if line.strip():
            record = json.loads(line)
            record["index"] = int(record["index"]) + first_row
            records.append(record)
    return records


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
    tmp = target.with_name(f".{target.name}.join.tmp")
    create_array_file(tmp, shape, arrays[0].dtype)
    out = _RowFile(tmp)
    try:
        row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * arrays[0].dtype.itemsize)
        step = max(1, COPY_CHUNK_BYTES // row_bytes)
        row = 0
        for array in arrays:
            for start in range(0, array.shape[0], step):
                chunk = np.asarray(array[start:start + step])
                out.write(row + start, chunk)
            row += array.shape[0]
        out.sync()
    finally:
        out.close()
    os.replace(tmp, target)


def finish_dataset(out: Path, manifest: dict, extra_run: Mapping | None = None, *, join: bool = True) -> dict:
    """Finish the dataset manifest of ``out`` once every part is committed, and (``join``) join them.

    ``manifest`` is the dataset manifest written at planning (``"complete": false``, the part
    list). The small per-row files (paths, labels, validity, patch grids, row offsets, failures)
    are joined at once; the feature arrays stay in the parts (``"parts": {"consolidated": false}``,
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
    atomic_write_text(out / PATHS_FILE, "".join((f / PATHS_FILE).read_text(encoding="utf-8") for f in folders))
    if manifest.get("labels"):
        atomic_save_npy(out / LABELS_FILE, np.concatenate([np.load(f / LABELS_FILE) for f in folders]))
    atomic_write_text(out / FAILURES_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in failures))
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
        "failures": {"file": FAILURES_FILE, "count": len(failures),
                     "by_kind": dict(sorted(Counter(r["kind"] for r in failures).items())), "items": failures},
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
    before, now = part_manifest.get("settings") or {}, manifest.get("settings") or {}
    differ = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    described = part_manifest.get("part") or {}
    wanted = part.describe()
    if differ or any(described.get(k) != v for k, v in wanted.items() if v is not None):
        what = f"settings differ: {', '.join(differ)}" if differ else f"it holds {described or 'unknown rows'}"
        raise FeatureStoreError(f"{folder}: this part comes from another extraction ({what}); remove the folder "
                                f"and rerun the same command with --resume to extract it again")


def join_features(out: Path, manifest: dict | None = None) -> dict:
    """Write the single ``layer-{k}_{pool}.npy`` files of a finished, parted folder and remove ``parts/``.

    One part's files are hard-linked into place (no copy; copied where links are not possible),
    several parts' are copied in chunks through temporary files (memory stays flat). Until the
    manifest says ``"consolidated": true`` readers use the parts, so the folder reads correctly
    at every moment, and an interrupted join is simply run again.
    """
    manifest = read_manifest(out) if manifest is None else manifest
    parts_info = manifest.get("parts") or {}
    if manifest.get("complete") is not True:
        raise FeatureStoreError(f"{out}: the extraction is unfinished; finish it first (the same "
                                f"`sail-vision extract` command with --resume, or --finalize after a task array)")
    if parts_info.get("consolidated", True):
        return manifest
    folders = [out / PARTS_DIR / item["name"] for item in parts_info["items"]]
    for info in manifest["features"].values():
        sources = [f / info["file"] for f in folders]
        if len(sources) == 1:
            _link_or_copy(sources[0], out / info["file"])
        else:
            _join_arrays(out / info["file"], sources)
        pause_point("extract:consolidate")
    joined = {**manifest, "parts": {**parts_info, "consolidated": True}}
    write_manifest(out, joined)
    pause_point("extract:cleanup")
    shutil.rmtree(out / PARTS_DIR, ignore_errors=True)
    return joined


def _link_or_copy(source: Path, target: Path) -> None:
    tmp = target.with_name(f".{target.name}.join.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
