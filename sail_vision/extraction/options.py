"""``ExtractOptions``: every option of an extraction in one object, checked once.

``sail-vision extract`` builds one from its command line, :func:`~.runner.extract` takes one (or its
fields as keyword arguments). The subset that decides the bytes written (:meth:`ExtractOptions.
output_settings`, completed with what the checkpoint and preprocessing resolve to) is recorded in
the manifest as ``settings``; ``--resume``, every task of a task array and every committed part are
compared against it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import InputError
from ..outputs import POOLS
from ..packing import BATCHING, PACKED_ATTENTION
from ..preprocessing import DEFAULT_MAX_PIXELS, DEFAULT_MAX_TOKENS, VIEW_PIPELINE, parse_resolution
from .parts import DEFAULT_PART_SIZE, task_slice
from .ray_engine import require_ray

SAVE_DTYPES = ("float16", "float32")
#: Who extracts the parts: this process (or each torchrun rank / array task), or a pool of Ray actors.
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class ExtractOptions:
    """What to extract and how. Defaults are the command line's; see docs/extraction.md for each.

    What: ``layers`` (hidden-state indices, negative from the end; default ``(-1,)``), ``pools``
    (``patch``/``mean``/``cls``/``end``; ``("mean",)``), ``norm`` (final RMSNorm on every layer;
    False). Inputs: ``layout`` ("auto"), ``split`` (None), ``labels_file`` (None), ``masks`` (None:
    the label-map folder of the pairs layout), ``reduce_zero_label`` (None: the layout's rule),
    ``depths`` (None: the depth-map folder of the pairs layout), ``depth_scale`` (None: 1000 16-bit
    PNG values per metre, i.e. millimetres),
    ``limit`` (None: all). Preprocessing: ``resolution`` (None = native; ``S`` or ``"HxW"``), ``max_tokens`` (4096),
    ``max_pixels`` (89478485; None = no limit), ``jpeg_draft`` (False: exact decoding).
    Compute: ``dtype`` ("auto"), ``device`` (None =
    auto), ``batch_size`` (16), ``batching`` ("packed"), ``max_batch_tokens`` (None = batch_size x
    the longest image), ``packed_attention`` ("auto"), ``workers`` (None = min(4, CPUs)). Output:
    ``save_dtype`` ("float16"), ``resume`` / ``overwrite`` (False), ``commit_interval`` (2.0 s),
    ``strict`` (False), ``progress`` (True). Parts and engines: ``part_size`` (10000),
    ``num_tasks`` / ``task_index`` (None: Slurm's, else one task), ``finalize`` (False),
    ``consolidate`` (True), ``engine`` ("local"), ``ray_address`` (None), ``ray_actors`` (None),
    ``ray_cpus_per_actor`` (None: min(4, the largest Ray node's CPUs) for CPU actors, 1 for GPU
    actors). Augmented views: ``views`` (0 = none; K: K seeded mmseg-style training
    views of every image, each a row, see :mod:`.views`), ``views_seed`` (0). Contained paths:
    ``allow_paths_under`` (folders Parquet image paths may lead into besides the dataset's own; ()).
    """

    layers: int | Iterable[int] = (-1,)
    pools: str | Iterable[str] = ("mean",)
    norm: bool = False
    resolution: object = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    dtype: str | None = "auto"
    device: object = None
    batch_size: int = 16
    workers: int | None = None
    resume: bool = False
    overwrite: bool = False
    save_dtype: str = "float16"
    limit: int | None = None
    strict: bool = False
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    jpeg_draft: bool = False
    layout: str = "auto"
    split: str | None = None
    labels_file: str | Path | None = None
    masks: str | Path | None = None
    reduce_zero_label: bool | None = None
    depths: str | Path | None = None
    depth_scale: float | None = None
    progress: bool = True
    commit_interval: float = 2.0
    batching: str = "packed"
    max_batch_tokens: int | None = None
    packed_attention: str = "auto"
    part_size: int = DEFAULT_PART_SIZE
    num_tasks: int | None = None
    task_index: int | None = None
    finalize: bool = False
    consolidate: bool = True
    engine: str = "local"
    ray_address: str | None = None
    ray_actors: int | None = None
    ray_cpus_per_actor: int | None = None
    views: int = 0
    views_seed: int = 0
    allow_paths_under: Sequence[str | Path] = ()

    def checked(self) -> "ExtractOptions":
        """These options with defaults filled in (workers, pools as a list), or a one-line InputError."""
        if self.resume and self.overwrite:
            raise InputError("pass either --resume or --overwrite, not both")
        if self.finalize and self.overwrite:
            raise InputError("--finalize joins finished parts; it cannot be combined with --overwrite")
        if self.save_dtype not in SAVE_DTYPES:
            raise InputError(f"--save-dtype {self.save_dtype!r}: choose float16 or float32")
        for name in ("batch_size", "part_size", "ray_cpus_per_actor"):
            value = getattr(self, name)
            if value is None and name == "ray_cpus_per_actor":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise InputError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
        if self.batching not in BATCHING:
            raise InputError(f"--batching {self.batching!r}: choose from {', '.join(BATCHING)}")
        if self.max_batch_tokens is not None and self.max_batch_tokens <= 0:
            raise InputError(f"--max-batch-tokens must be positive, got {self.max_batch_tokens}")
        if self.packed_attention not in PACKED_ATTENTION:
            raise InputError(f"--packed-attention {self.packed_attention!r}: choose from "
                             f"{', '.join(PACKED_ATTENTION)}")
        if not self.commit_interval > 0:
            raise InputError(f"--commit-interval must be positive, got {self.commit_interval}")
        for name in ("views", "views_seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"--{name.replace('_', '-')} must be an integer 0 or more, got {value!r}")
        if self.views and parse_resolution(self.resolution) is None:
            raise InputError("--views needs a fixed --resolution (HxW, or S for S x S): it is the crop size of "
                             "every view")
        workers = min(4, os.cpu_count() or 1) if self.workers is None else self.workers
        if workers < 0:
            raise InputError(f"--workers must be 0 or more, got {workers}")
        task_slice(self.num_tasks, self.task_index)  # a bad task option fails before any process group is joined
        if self.engine not in ENGINES:
            raise InputError(f"--engine {self.engine!r}: choose from {', '.join(ENGINES)}")
        if self.engine == "ray":
            require_ray()
            if self.num_tasks is not None or self.task_index is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise InputError("--engine ray schedules the parts itself; run it as one process, without torchrun "
                                 "or --num-tasks / --task-index")
        return replace(self, workers=workers, pools=normalise_pools(self.pools))

    def output_settings(self, *, compute_dtype: str, packed: bool, packed_kernel: str | None,
                        preprocessing: dict, source_args: dict, layers: list[int],
                        revision: str | None = None) -> dict:
        """The options that decide the bytes written (what resume compares), as resolved; ``revision``
        is a hub checkpoint's commit sha (None for a local folder)."""
        settings = {"layers": layers, "pools": list(self.pools), "norm": bool(self.norm),
                    "add_cls": "cls" in self.pools, "preprocessing": preprocessing, "dtype": compute_dtype,
                    "save_dtype": self.save_dtype, "batch_size": int(self.batch_size),
                    "batching": "packed" if packed else "grouped", "inputs": source_args,
                    "part_size": int(self.part_size)}
        if revision is not None:  # hub checkpoints only: local-folder settings stay as they were
            settings["checkpoint_revision"] = revision
        if self.views:  # only with views: folders extracted without them keep resuming
            settings["views"] = self.views_entry()
        if packed:
            settings["max_batch_tokens"] = self.max_batch_tokens  # None: batch_size x the longest sequence
            settings["packed_attention"] = packed_kernel
        return settings

    def views_entry(self) -> dict | None:
        """The manifest's ``"views"`` (count, seed, pipeline), or None without views."""
        if not self.views:
            return None
        return {"count": int(self.views), "seed": int(self.views_seed), "pipeline": VIEW_PIPELINE}


def normalise_pools(pools: str | Iterable[str]) -> list[str]:
    items = [pools] if isinstance(pools, str) else list(pools)
    if not items:
        raise InputError(f"no pool requested; choose from {', '.join(POOLS)}")
    bad = [p for p in items if p not in POOLS]
    if bad:
        raise InputError(f"pool(s) {', '.join(map(repr, bad))}: choose from {', '.join(POOLS)}")
    return list(dict.fromkeys(items))


def resolve_compute_dtype(dtype, device) -> str:
    """The compute dtype's name (``devices.resolve_compute_dtype``: ``auto`` -> the device's best)."""
    from .. import devices

    return str(devices.resolve_compute_dtype(dtype, device)).removeprefix("torch.")
