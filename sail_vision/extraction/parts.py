"""Parts: the unit of work, of resume and of output of an extraction.

The ordered inputs are cut into *parts* of ``part_size`` rows (the last one shorter). Each part is
extracted into ``parts/.part-NNNNN.partial/`` as a complete feature folder of its own (its own
manifest, row-level resume, failures), and committed by renaming it to ``parts/part-NNNNN/``. A
part depends only on its own rows, so any split of the parts between processes, machines and
reruns gives the same bytes. When every part is committed, ``finishing.finish_dataset`` finishes
the dataset and ``finishing.join_features`` writes its single ``layer-{k}_{pool}.npy`` files.

Who does which part: :func:`parts_for` takes the parts of one task of a task array
(``--num-tasks`` / ``--task-index``, by default from Slurm's ``SLURM_ARRAY_TASK_COUNT`` /
``SLURM_ARRAY_TASK_ID``) and, within it, of one torchrun rank.
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import InputError
from ..feature_store import MANIFEST_FILE, PARTS_DIR, FeatureStoreError, fsync_dir, read_manifest
from ..pause_points import pause_point

#: Rows per part unless ``--part-size`` says otherwise (a sharded input's shards are parts of their own).
DEFAULT_PART_SIZE = 10_000


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
    fsync_dir(final.parent)


# ---------------------------------------------------------------------------------- consolidating
