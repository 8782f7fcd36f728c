"""The little torch.distributed an extraction needs: ranks, barriers, one broadcast, one gather.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is created here
(gloo on CPU, nccl bound to the rank's GPU with ``device_id`` on CUDA) unless the caller already made
one; otherwise everything is a no-op for a single process. Python objects (plans, outcomes, counts,
error messages) always travel over a gloo group: NCCL is for tensors, and its watchdog would hold a
rank that waits for another rank's error for the whole timeout. :meth:`DistContext.together` makes
an exception on any rank end every rank, each naming the rank that failed and its message.
"""

from __future__ import annotations

import contextlib
import datetime
import inspect
import os
from dataclasses import dataclass
from typing import Any

import torch

from .results import ExtractionError

#: Rank 0 reads image headers while the other ranks wait; allow that to take a while.
DEFAULT_TIMEOUT = datetime.timedelta(hours=6)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    #: The gloo group Python objects travel over (None: the default group, itself gloo).
    object_group: Any = None
    owns_object_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def setup(cls, device: torch.device) -> tuple["DistContext", torch.device]:
        """Join (or create, under torchrun) the default process group; returns it with this process's
        device (on CUDA: its GPU, made current before NCCL starts, see ``devices.select_cuda_device``)."""
        import torch.distributed as dist

        from ..devices import select_cuda_device

        joined = dist.is_available() and dist.is_initialized()
        world_size = dist.get_world_size() if joined else int(os.environ.get("WORLD_SIZE", "1"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = select_cuda_device(device, distributed=world_size > 1, local_rank=local_rank)
        if world_size <= 1:
            return cls(), device
        owns = not joined
        if owns:
            kwargs = {"backend": "nccl" if device.type == "cuda" else "gloo", "timeout": DEFAULT_TIMEOUT}
            if device.type == "cuda" and "device_id" in inspect.signature(dist.init_process_group).parameters:
                kwargs["device_id"] = device  # NCCL bound to this rank's GPU from the start
            dist.init_process_group(**kwargs)
        context = cls(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=owns)
        if dist.get_backend() != "gloo":  # every rank creates it, in the same order
            context.object_group = dist.new_group(backend="gloo", timeout=DEFAULT_TIMEOUT)
            context.owns_object_group = True
        return context, device

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier(group=self.object_group)

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        holder = [value if self.is_main else None]
        dist.broadcast_object_list(holder, src=0, group=self.object_group)
        return holder[0]

    def gather(self, value) -> list:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        import torch.distributed as dist

        values = [None] * self.world_size
        dist.all_gather_object(values, value, group=self.object_group)
        return values

    @contextlib.contextmanager
    def together(self, stage: str):
        """Run a step on every rank; when it raises on any rank, every rank stops.

        Each rank reports its outcome after the step; the failing rank re-raises its own exception,
        the others raise :class:`ExtractionError` naming the first failing rank and its message, so no
        rank goes on to wait in a later collective until the timeout. A no-op for one process.
        """
        if not self.enabled:
            yield
            return
        failure = None
        try:
            yield
        except Exception as exc:  # reported to the other ranks, then re-raised below
            failure = exc
        reports = self.gather(None if failure is None else f"{type(failure).__name__}: {failure}")
        if failure is not None:
            raise failure
        failed = [(rank, message) for rank, message in enumerate(reports) if message is not None]
        if failed:
            rank, message = failed[0]
            raise ExtractionError(f"rank {rank} stopped {stage}: {message}")

    def close(self) -> None:
        import torch.distributed as dist

        if self.owns_object_group:
            if not self.owns_group:  # the default group's destruction takes its subgroups with it
                dist.destroy_process_group(self.object_group)
            self.owns_object_group, self.object_group = False, None
        if self.owns_group:
            dist.destroy_process_group()
            self.owns_group = False
