"""``--engine ray``: the parts of an extraction as a Ray dataset, encoded by a pool of actors.

Each row of the Ray dataset is one part (a slice of the listing or one input shard). A pool of
actors, each holding the model once (one GPU each, or CPU actors), takes parts one at a time,
extracts each into its work folder and commits it, exactly as a local process does; so the parts
and the joined files are the bytes a single process writes. The driver plans the dataset first
and joins the parts at the end. Ray is optional: ``pip install 'sail-vision[ray]'``.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

from ..errors import InputError, SailVisionError
from .parts import Part, commit_part, is_committed

#: The pip extra that installs Ray Data.
EXTRA = "sail-vision[ray]"


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(f"--engine ray needs Ray Data: pip install '{EXTRA}'") from None
    return ray


class _PartWorker:
    """A Ray actor: loads the model on first use and extracts the parts it is handed."""

    def __init__(self, job, parts: Sequence[Part], use_gpu: bool, threads: int):
        import torch

        if threads:
            torch.set_num_threads(threads)
        # Ray sets CUDA_VISIBLE_DEVICES to the actor's own GPU, which is then device 0.
        device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
        if use_gpu:
            torch.cuda.set_device(device)
        self.job = dataclasses.replace(job, device=device, progress=False, _encoder=None)
        self.parts = {p.index: p for p in parts}

    def __call__(self, batch: dict) -> dict:
        from .runner import _extract_part

        processed, errors = [], []
        for index in batch["index"]:
            part = self.parts[int(index)]
            done, error = 0, ""
            try:
                if not is_committed(self.job.out, part):
                    done = _extract_part(self.job, part)
                    commit_part(self.job.out, part)
            except Exception as exc:  # reported by the driver in one line; the other parts go on
                error = str(exc) if isinstance(exc, SailVisionError) else f"{type(exc).__name__}: {exc}"
            processed.append(done)
            errors.append(f"{part.name}: {error}" if error else "")
        return {"index": list(batch["index"]), "processed": processed, "error": errors,
                "pid": [os.getpid()] * len(processed)}


def extract_parts_on_ray(job, parts: Sequence[Part], *, address: str | None, actors: int | None,
                         cpus_per_actor: int, use_gpus: bool | None = None) -> tuple[int, int]:
    """Extract ``parts`` with a pool of Ray actors; returns (images processed, actors used).

    ``address``: an existing cluster (``ray://host:10001``, ``auto``), else a local Ray started
    for this run and stopped after it. ``actors``: default one per GPU of the cluster, else the
    cluster's CPUs / ``cpus_per_actor`` (at least 1). GPU actors take one GPU each.
    """
    ray = require_ray()
    if actors is not None and actors <= 0:
        raise InputError(f"--ray-actors must be positive, got {actors}")
    if cpus_per_actor <= 0:
        raise InputError(f"--ray-cpus-per-actor must be positive, got {cpus_per_actor}")
    import logging

    logging.getLogger("ray").setLevel(logging.WARNING)
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ray.data.DataContext.get_current().enable_progress_bars = False
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(f"--ray-address {address}: cannot connect to a Ray cluster ({exc})") from None
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if use_gpus is None:
            use_gpus = gpus > 0 and job.device.type == "cuda"
        if actors is None:
            actors = gpus if use_gpus else max(1, int(resources.get("CPU", 1)) // cpus_per_actor)
        if use_gpus and actors > gpus:
            raise InputError(f"--ray-actors {actors}: the Ray cluster has {gpus} GPU(s); ask for at most {gpus}")
        todo = [p for p in parts if not is_committed(job.out, p)]
        if not todo:
            return 0, 0
        actors = min(actors, len(todo))
        dataset = ray.data.from_items([{"index": p.index} for p in todo], override_num_blocks=len(todo))
        mapped = dataset.map_batches(
            _PartWorker, fn_constructor_args=(dataclasses.replace(job, _encoder=None), todo, use_gpus,
                                              cpus_per_actor),
            batch_size=1, concurrency=actors, num_gpus=1 if use_gpus else 0, num_cpus=cpus_per_actor,
            batch_format="numpy")
        rows = mapped.take_all()
        failed = [str(r["error"]) for r in rows if str(r["error"])]
        if failed:
            from .results import ExtractionError

            more = f" (and {len(failed) - 1} more part(s))" if len(failed) > 1 else ""
            raise ExtractionError(f"a Ray actor stopped on {failed[0]}{more}; the committed parts are kept: fix "
                                  f"the cause and rerun with --resume")
        return sum(int(r["processed"]) for r in rows), len({int(r["pid"]) for r in rows})
    finally:
        if started:
            ray.shutdown()
