"""The little torch.distributed an extraction needs: ranks, barriers, one broadcast.

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) the process group is created here
(gloo on CPU, nccl on CUDA) unless the caller already made one; otherwise everything is a
no-op for a single process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

#: Rank 0 reads image headers while the other ranks wait; allow that to take a while.
DEFAULT_TIMEOUT = datetime.timedelta(hours=6)


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

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
        if joined:
            return cls(dist.get_rank(), world_size, local_rank), device
        if world_size <= 1:
            return cls(), device
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=DEFAULT_TIMEOUT)
        return cls(dist.get_rank(), dist.get_world_size(), local_rank, owns_group=True), device

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank (any picklable object)."""
        if not self.enabled:
            return value
        import torch.distributed as dist

        holder = [value if self.is_main else None]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def gather(self, value) -> list:
        """Every rank's ``value`` (any picklable object), in rank order, on every rank."""
        if not self.enabled:
            return [value]
        import torch.distributed as dist

        values = [None] * self.world_size
        dist.all_gather_object(values, value)
        return values

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False
