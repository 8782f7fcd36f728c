"""``--engine ray``: the parts of an extraction as a Ray dataset, encoded by a pool of actors.

Each row of the Ray dataset is one part (a slice of the listing or one input shard). A pool of
actors, each holding the model once (one GPU each, or CPU actors), takes parts one at a time,
extracts each into its work folder and commits it, exactly as a local process does; so the parts
and the joined files are the bytes a single process writes. The driver plans the dataset first
and joins the parts at the end. Ray is optional: ``pip install 'sail-vision[ray]'``.

Defaults fit the cluster found: CPU actors take ``min(4, the largest node's CPUs)`` CPUs each; an
actor no node can hold is refused before anything starts, and one that a live cluster cannot place
within :data:`PLACEMENT_WAIT_S` ends the run with a one-line error. Ray's own logs stay out of the
terminal (``log_to_driver=False``, Ray Data's progress and start-up messages off); a tqdm bar
counts parts. An actor that hits a CUDA error exits, so Ray starts a fresh one (a new CUDA
context) and the part is tried once more.
"""

from __future__ import annotations

import os
from typing import Sequence

from ..errors import InputError, SailVisionError
from ..feature_store import STATE_DIR, atomic_write_text
from .part_job import PartJob, extract_part
from .parts import Part, commit_part, is_committed
from .results import ExtractionError

#: The pip extra that installs Ray Data.
EXTRA = "sail-vision[ray]"
#: CPUs per CPU actor unless ``--ray-cpus-per-actor`` says otherwise (clamped to the largest node's).
DEFAULT_CPUS_PER_ACTOR = 4
#: How long the actor pool may wait for its first actor to be placed before the run stops (seconds).
PLACEMENT_WAIT_S = 120
#: Tests only: the path of a marker file; the first part an actor extracts while it is absent creates
#: it and fails with a fake CUDA error (see :func:`is_cuda_error`); ``always``: every part fails so.
FAKE_CUDA_ERROR_ENV = "SAIL_VISION_FAKE_CUDA_ERROR_ONCE"
#: Exit status of an actor that stops after a CUDA error (Ray restarts it and retries the part).
CUDA_ERROR_EXIT = 75


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise InputError(f"--engine ray needs Ray Data: pip install '{EXTRA}'") from None
    return ray


def is_cuda_error(exc: BaseException) -> bool:
    """True for errors that leave the process's CUDA context unusable (illegal access, launch failure,
    ECC, device-side assert...): the actor must not take another part."""
    if type(exc).__name__ in ("AcceleratorError", "CudaError"):
        return True
    return isinstance(exc, RuntimeError) and "CUDA error" in str(exc)


class _PartWorker:
    """A Ray actor: loads the model on first use and extracts the parts it is handed."""

    def __init__(self, job: PartJob, parts: Sequence[Part], use_gpu: bool, threads: int):
        import torch

        if threads:
            torch.set_num_threads(threads)
        # Ray sets CUDA_VISIBLE_DEVICES to the actor's own GPU, which is then device 0.
        device = torch.device("cuda", 0) if use_gpu else torch.device("cpu")
        if use_gpu:
            torch.cuda.set_device(device)
        self.job = job.for_process(device=device, progress=False)
        self.parts = {p.index: p for p in parts}

    def __call__(self, batch: dict) -> dict:
        processed, errors = [], []
        for index in batch["index"]:
            part = self.parts[int(index)]
            done, error = 0, ""
            try:
                if not is_committed(self.job.out, part):
                    _fake_cuda_error_once()
                    done = extract_part(self.job, part)
                    commit_part(self.job.out, part)
            except Exception as exc:  # reported by the driver in one line; the other parts go on
                error = str(exc) if isinstance(exc, SailVisionError) else f"{type(exc).__name__}: {exc}"
                if is_cuda_error(exc):
                    if _first_cuda_error(self.job.out, part, error):
                        os._exit(CUDA_ERROR_EXIT)  # a poisoned CUDA context: Ray restarts the actor, retries the part
                    error = f"{error} (again, on a fresh actor)"
            processed.append(done)
            errors.append(f"{part.name}: {error}" if error else "")
        return {"index": list(batch["index"]), "processed": processed, "error": errors,
                "pid": [os.getpid()] * len(processed)}


def _first_cuda_error(out, part: Part, error: str) -> bool:
    """Record a part's CUDA error in the run's working folder; False when it had one already."""
    marker = out / STATE_DIR / f"cuda-error-{part.name}"
    if marker.exists():
        return False
    marker.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, error + "\n")
    return True


def _fake_cuda_error_once() -> None:
    marker = os.environ.get(FAKE_CUDA_ERROR_ENV)
    if marker == "always":
        raise RuntimeError("CUDA error: an illegal memory access was encountered (fake, for a test)")
    if marker:
        try:
            with open(marker, "x"):
                pass
        except FileExistsError:
            return
        raise RuntimeError("CUDA error: an illegal memory access was encountered (fake, for a test)")


def actor_resources(nodes: Sequence[dict], *, use_gpus: bool, cpus_per_actor: int | None) -> tuple[int, int]:
    """(CPUs, GPUs) each actor asks for on a cluster of ``nodes`` (``ray.nodes()``), or a one-line
    InputError when no node could ever hold one."""
    alive = [n.get("Resources") or {} for n in nodes if n.get("Alive", True)]
    largest_cpus = int(max((r.get("CPU", 0) for r in alive), default=0))
    largest_gpus = int(max((r.get("GPU", 0) for r in alive), default=0))
    if use_gpus and largest_gpus < 1:
        raise InputError("--engine ray: the Ray cluster has no GPU node, so GPU actors can never be placed; "
                         "add GPU nodes, or pass --device cpu for CPU actors")
    if cpus_per_actor is None:
        cpus = 1 if use_gpus else max(1, min(DEFAULT_CPUS_PER_ACTOR, largest_cpus))
    else:
        cpus = cpus_per_actor
    if cpus > largest_cpus:
        raise InputError(f"--ray-cpus-per-actor {cpus}: the largest node of the Ray cluster has {largest_cpus} "
                         f"CPU(s), so such an actor can never be placed; ask for at most {largest_cpus}")
    return cpus, int(use_gpus)


def extract_parts_on_ray(job: PartJob, parts: Sequence[Part], *, address: str | None, actors: int | None,
                         cpus_per_actor: int | None, use_gpus: bool | None = None,
                         progress: bool = False) -> tuple[int, int]:
    """Extract ``parts`` with a pool of Ray actors; returns (images processed, actors used).

    ``address``: an existing cluster (``ray://host:10001``, ``auto``), else a local Ray started
    for this run and stopped after it. ``actors``: default one per GPU of the cluster, else the
    cluster's CPUs / CPUs per actor (at least 1). ``cpus_per_actor``: default
    ``min(4, largest node's CPUs)`` for CPU actors, 1 for GPU actors (which take one GPU each).
    """
    ray = require_ray()
    if actors is not None and actors <= 0:
        raise InputError(f"--ray-actors must be positive, got {actors}")
    if cpus_per_actor is not None and cpus_per_actor <= 0:
        raise InputError(f"--ray-cpus-per-actor must be positive, got {cpus_per_actor}")
    todo = [p for p in parts if not is_committed(job.out, p)]
    if not todo:
        return 0, 0
    _quiet_ray_logs()
    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False,
                     logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise InputError(f"--ray-address {address}: cannot connect to a Ray cluster ({exc})") from None
    try:
        _quiet_ray_data()
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if use_gpus is None:
            use_gpus = job.device.type == "cuda"
        cpus, _ = actor_resources(ray.nodes(), use_gpus=use_gpus, cpus_per_actor=cpus_per_actor)
        if actors is None:
            actors = gpus if use_gpus else max(1, int(resources.get("CPU", 1)) // cpus)
        if use_gpus and actors > gpus:
            raise InputError(f"--ray-actors {actors}: the Ray cluster has {gpus} GPU(s); ask for at most {gpus}")
        actors = min(actors, len(todo))
        return _run_pool(ray, job, todo, actors=actors, cpus=cpus, use_gpus=use_gpus, progress=progress)
    finally:
        if started:
            ray.shutdown()


def _run_pool(ray, job: PartJob, todo: Sequence[Part], *, actors: int, cpus: int, use_gpus: bool,
              progress: bool) -> tuple[int, int]:
    from ray.data import ActorPoolStrategy

    dataset = ray.data.from_items([{"index": p.index} for p in todo], override_num_blocks=len(todo))
    mapped = dataset.map_batches(
        _PartWorker, fn_constructor_args=(job.for_process(), todo, use_gpus, cpus), batch_size=1,
        compute=ActorPoolStrategy(size=actors), num_gpus=1 if use_gpus else 0, num_cpus=cpus, batch_format="numpy")
    # Ray Data restarts a dead actor and retries its batch (its defaults; no deprecated remote args).
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(todo), desc=f"extracting {len(todo)} parts on {actors} Ray actor(s)", unit="part",
                   dynamic_ncols=True)
    rows = []
    try:
        for row in mapped.iter_rows():
            rows.append(row)
            if bar is not None:
                bar.update(1)
    except Exception as exc:  # noqa: BLE001 - Ray wraps errors of the pool in its own types
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ExtractionError(f"the Ray actor pool stopped ({message}); the committed parts are kept: fix the "
                              f"cause and rerun with --resume") from None
    finally:
        if bar is not None:
            bar.close()
    failed = [str(r["error"]) for r in rows if str(r["error"])]
    if failed:
        more = f" (and {len(failed) - 1} more part(s))" if len(failed) > 1 else ""
        raise ExtractionError(f"a Ray actor stopped on {failed[0]}{more}; the committed parts are kept: fix "
                              f"the cause and rerun with --resume")
    return sum(int(r["processed"]) for r in rows), len({int(r["pid"]) for r in rows})


def _quiet_ray_logs() -> None:
    import logging

    for name in ("ray", "ray.data", "ray.data._internal"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _quiet_ray_data() -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False
    context.wait_for_min_actors_s = PLACEMENT_WAIT_S
