"""Device and dtype selection: which GPU each launcher case computes on, and what --dtype auto picks."""

from __future__ import annotations


import pytest
import torch

from sail_vision.devices import (auto_dtype, cuda_index, resolve_compute_dtype, resolve_device, resolve_dtype,
                                 select_cuda_device)
from sail_vision.errors import InputError


@pytest.mark.parametrize("requested, distributed, local_rank, count, expected", [
    (None, False, 0, 4, 0),   # one process, --device cuda
    (1, False, 0, 4, 1),      # one process, --device cuda:1
    (None, True, 3, 4, 3),    # torchrun: cuda:LOCAL_RANK
    (2, True, 2, 4, 2),       # torchrun, --device cuda:LOCAL_RANK spelled out
    (None, True, 5, 1, 0),    # a launcher that gives each rank one visible GPU
])
def test_cuda_index_for_each_launcher_case(requested, distributed, local_rank, count, expected):
    assert cuda_index(requested, distributed=distributed, local_rank=local_rank, device_count=count) == expected


@pytest.mark.parametrize("requested, distributed, local_rank, count, message", [
    (4, False, 0, 4, "has 4 GPU"),
    (1, True, 0, 4, "every rank uses cuda:LOCAL_RANK"),
    (None, True, 5, 4, "LOCAL_RANK 5 but only 4 GPUs"),
    (None, False, 0, 0, "CUDA is not available"),
])
def test_impossible_cuda_choices_are_one_line_errors(requested, distributed, local_rank, count, message):
    with pytest.raises(InputError, match=message):
        cuda_index(requested, distributed=distributed, local_rank=local_rank, device_count=count)


def test_a_single_process_on_cuda_1_makes_it_the_current_device(monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert select_cuda_device(torch.device("cuda", 1), distributed=False, local_rank=0) == torch.device("cuda", 1)
    assert select_cuda_device(torch.device("cuda"), distributed=True, local_rank=1) == torch.device("cuda", 1)
    assert current == [1, 1]


def test_extraction_under_an_existing_process_group_still_selects_the_gpu(monkeypatch):
    """A caller that made the process group itself (the old code skipped set_device then)."""
    import torch.distributed as dist

    from sail_vision.extraction.distributed import DistContext

    current = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_backend", lambda: "nccl")  # the caller's group (mmengine's, say)
    monkeypatch.setattr(dist, "new_group", lambda **kwargs: ("gloo group", kwargs["backend"]))
    monkeypatch.setenv("LOCAL_RANK", "1")
    context, device = DistContext.setup(torch.device("cuda"))
    assert (context.rank, context.world_size, context.owns_group) == (1, 2, False)
    assert device == torch.device("cuda", 1) and current == [1]
    assert context.object_group == ("gloo group", "gloo") and context.owns_object_group


@pytest.mark.parametrize("capability, expected", [((8, 0), "bfloat16"), ((9, 0), "bfloat16"), ((7, 5), "float16"),
                                                  ((6, 0), "float16")])
def test_auto_dtype_is_float16_where_bfloat16_is_not_native(monkeypatch, capability, expected):
    def no_context(*args, **kwargs):
        raise AssertionError("auto_dtype must not switch devices or create a CUDA context")

    monkeypatch.setattr(torch.cuda, "device", no_context)
    monkeypatch.setattr(torch.cuda, "set_device", no_context)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert auto_dtype(torch.device("cuda", 0)) == expected
    assert resolve_compute_dtype("auto", "cuda:0") == resolve_dtype(expected)
    assert resolve_compute_dtype(None, "cuda") == resolve_dtype(expected)
    assert resolve_compute_dtype("fp16", "cuda") == torch.float16  # an explicit dtype wins
    assert auto_dtype(torch.device("cpu")) == "float32" and resolve_compute_dtype("auto", "cpu") == torch.float32


def test_dtype_and_device_names():
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(InputError, match="int8"):
        resolve_dtype("int8")
    with pytest.raises(InputError, match="expected cpu, cuda or cuda:N"):
        resolve_device("gpu0")
