"""NCCL for tensors only: Python objects travel over a gloo group; NCCL is bound to the rank's GPU."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from sail_vision.extraction.distributed import DistContext


@pytest.fixture
def fake_nccl(monkeypatch):
    calls = []
    gloo = object()
    state = {"initialized": False}

    def init_process_group(backend=None, init_method=None, timeout=None, device_id=None):
        calls.append(("init", {"backend": backend, "timeout": timeout, "device_id": device_id}))
        state["initialized"] = True

    def new_group(**kwargs):
        calls.append(("new_group", kwargs))
        return gloo

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: calls.append(("set_device", index)))
    monkeypatch.setattr(dist, "is_initialized", lambda: state["initialized"])
    monkeypatch.setattr(dist, "init_process_group", init_process_group)
    monkeypatch.setattr(dist, "new_group", new_group)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "barrier", lambda group=None: calls.append(("barrier", group)))
    monkeypatch.setattr(dist, "all_gather_object", lambda out, value, group=None:
                        (calls.append(("gather", group)), out.__setitem__(slice(None), [value, value])))
    monkeypatch.setattr(dist, "broadcast_object_list", lambda holder, src, group=None:
                        calls.append(("broadcast", group)))
    monkeypatch.setattr(dist, "destroy_process_group", lambda group=None: calls.append(("destroy", group)))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    return calls, gloo


def test_objects_travel_over_gloo_and_nccl_is_bound_to_the_rank_gpu(fake_nccl):
    calls, gloo = fake_nccl
    context, device = DistContext.setup(torch.device("cuda"))
    assert device == torch.device("cuda", 1)
    init = [kwargs for name, kwargs in calls if name == "init"]
    assert init[0]["backend"] == "nccl" and init[0]["device_id"] == torch.device("cuda", 1)
    assert ("new_group", {"backend": "gloo", "timeout": init[0]["timeout"]}) in calls
    assert calls.index(("set_device", 1)) < next(i for i, (name, _) in enumerate(calls) if name == "init")
    calls.clear()
    context.barrier()
    context.broadcast("plan")
    assert context.gather(3) == [3, 3]
    assert calls == [("barrier", gloo), ("broadcast", gloo), ("gather", gloo)]
    calls.clear()
    context.close()
    assert calls == [("destroy", None)]


def test_a_failure_on_another_rank_stops_this_one(fake_nccl, monkeypatch):
    from sail_vision.extraction.results import ExtractionError

    context, _ = DistContext.setup(torch.device("cuda"))
    monkeypatch.setattr(dist, "all_gather_object", lambda out, value, group=None:
                        out.__setitem__(slice(None), ["OSError: disk full", value]))
    with pytest.raises(ExtractionError, match="rank 0 stopped while testing: OSError: disk full"):
        with context.together("while testing"):
            pass
    with pytest.raises(ValueError, match="mine"):  # the failing rank raises its own exception
        with context.together("while testing"):
            raise ValueError("mine")
