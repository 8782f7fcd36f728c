"""Compute dtype and device names, checked once: ``'bf16'`` or ``'cuda:1'`` in, a torch object out."""

from __future__ import annotations

import torch

from .errors import InputError

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """'bfloat16' / 'bf16' / torch.bfloat16 ... -> torch.dtype (float32, bfloat16 or float16)."""
    if isinstance(dtype, torch.dtype):
        if dtype in (torch.float32, torch.bfloat16, torch.float16):
            return dtype
    elif isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in _DTYPES:
        return _DTYPES[dtype.lower().removeprefix("torch.")]
    raise InputError(f"dtype {dtype!r} is not supported; use float32, bfloat16 or float16")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """'auto' / None -> cuda when available, else cpu; 'cpu', 'cuda', 'cuda:N' are checked here, so a
    bad value or a missing GPU is a clear InputError, not an error from deep inside torch."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise InputError(f"--device {device!r}: expected cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    return resolved


def auto_dtype(device: torch.device) -> str:
    """``--dtype auto``: bfloat16 on GPUs that compute it natively (Ampere and later, compute capability
    8.0+), float16 on older GPUs (where no fused kernel takes bfloat16), float32 on the CPU. Reads the
    device's properties only: no CUDA context is created and the current device is not changed."""
    if device.type != "cuda":
        return "float32"
    major, _ = torch.cuda.get_device_capability(device)
    return "bfloat16" if major >= 8 else "float16"


def resolve_compute_dtype(dtype: str | torch.dtype | None, device: str | torch.device | None) -> torch.dtype:
    """A compute dtype for ``device``: ``'auto'`` (or None) -> :func:`auto_dtype`, else :func:`resolve_dtype`."""
    if dtype is None or (isinstance(dtype, str) and dtype.lower() == "auto"):
        return resolve_dtype(auto_dtype(resolve_device(device)))
    return resolve_dtype(dtype)


def cuda_index(requested: int | None, *, distributed: bool, local_rank: int, device_count: int) -> int:
    """The GPU a process computes on.

    Under torchrun each rank takes ``cuda:LOCAL_RANK`` (or ``cuda:0`` when a launcher gave each rank one
    visible GPU); a single process takes ``requested`` (``cuda:N``), else GPU 0.
    """
    if device_count < 1:
        raise InputError("--device cuda: CUDA is not available on this machine; use --device cpu")
    if distributed:
        if requested is not None and requested != local_rank:
            raise InputError(f"--device cuda:{requested} under torchrun: every rank uses cuda:LOCAL_RANK; pass "
                             f"--device cuda (choose GPUs with CUDA_VISIBLE_DEVICES)")
        if local_rank < device_count:
            return local_rank
        if device_count == 1:
            return 0
        raise InputError(f"LOCAL_RANK {local_rank} but only {device_count} GPUs are visible; start at most "
                         f"{device_count} processes per machine")
    index = 0 if requested is None else requested
    if index >= device_count:
        raise InputError(f"--device cuda:{index}: this machine has {device_count} GPU(s) (cuda:0..cuda:"
                         f"{device_count - 1})")
    return index


def select_cuda_device(device: torch.device, *, distributed: bool, local_rank: int) -> torch.device:
    """The process's GPU (see :func:`cuda_index`), made the current device, so that pinned-memory threads,
    NCCL and the caching allocator all use it rather than GPU 0."""
    index = cuda_index(device.index, distributed=distributed, local_rank=local_rank,
                       device_count=torch.cuda.device_count())
    torch.cuda.set_device(index)
    return torch.device("cuda", index)
