"""What only a GPU can show: the kernels auto picks run, FlexAttention compiles once per bucket, the
defaults resolve to half precision, and checking a config leaves CUDA uninitialised. Skipped without CUDA
(``benchmarks/gpu_check.sh`` runs them)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from sail_vision import SailEncoder
from sail_vision.packing import resolve_packed_attention

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _items(grids, p=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(nh, nw, 3, p, p, generator=gen).cuda() for nh, nw in grids]


def test_checking_a_backbone_config_leaves_cuda_uninitialised_in_a_fresh_process(tiny_checkpoint):
    """Runs on any machine; on a GPU machine it is the real proof (no context before init_dist)."""
    code = ("import torch; from sail_vision.mmseg import SAILBackbone; "
            f"SAILBackbone.check_config(dict(checkpoint={str(tiny_checkpoint)!r})); "
            "assert not torch.cuda.is_initialized(), 'check_config initialised CUDA'")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


@cuda
def test_cuda_auto_defaults_are_half_precision(tiny_checkpoint):
    expected = torch.bfloat16 if torch.cuda.get_device_capability()[0] >= 8 else torch.float16
    assert SailEncoder.from_pretrained(tiny_checkpoint, device="cuda").dtype == expected


@cuda
@pytest.mark.parametrize("kernel", ["auto", "flex"])
def test_cuda_packed_kernel_runs_and_equals_one_at_a_time(tiny_checkpoint, kernel):
    encoder = SailEncoder.from_pretrained(tiny_checkpoint, device="cuda", packed_attention=kernel)
    items = _items([(1, 1), (2, 3), (17, 1), (6, 5), (4, 4)])
    packed = encoder.encode_patches(items, [-1], packed_output=True, max_batch_tokens=80)
    for i, item in enumerate(items):
        alone = encoder.encode_patches(item, [-1]).hidden_states[4][0]
        torch.testing.assert_close(packed.image_states(4, i).float(), alone.float(), rtol=0.05, atol=0.05)
    if kernel == "auto":
        assert encoder.packed_kernel() == resolve_packed_attention("auto", "cuda", encoder.dtype)


@cuda
def test_cuda_flex_compiles_once_per_length_bucket(tiny_checkpoint):
    pytest.importorskip("torch.nn.attention.flex_attention")
    from torch._dynamo.utils import counters

    encoder = SailEncoder.from_pretrained(tiny_checkpoint, device="cuda", packed_attention="flex")
    encoder.encode_patches(_items([(5, 5), (4, 6)]), [-1], max_batch_tokens=1000)  # 55 tokens: bucket 128
    compiled = counters["stats"]["unique_graphs"]
    for grids in ([(3, 3), (2, 7)], [(6, 6), (5, 5)], [(1, 1)] * 9):  # other totals, same bucket
        encoder.encode_patches(_items(grids), [-1], max_batch_tokens=1000)
    assert counters["stats"]["unique_graphs"] == compiled  # no recompilation per pack
