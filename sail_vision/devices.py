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
