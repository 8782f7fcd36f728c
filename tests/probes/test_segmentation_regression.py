"""The segmentation probe's results are today's: a run on the fixtures' data, for both BatchNorm modes,
equals the numbers recorded before the probe was split into modules (``data/segmentation_before_split.json``,
written by the code at commit c1fccfb with the same seeds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sail_vision.probes import FeatureInput
from sail_vision.probes.seg_heads import SegmentationConfig
from sail_vision.probes.segmentation import run_segmentation_probe

from .test_segmentation import QUICK, make_store, seg_data

RECORDED = json.loads((Path(__file__).parent / "data" / "segmentation_before_split.json").read_text())


@pytest.mark.parametrize("bn", ["fixed", "batch"])
def test_results_equal_those_recorded_before_the_split(bn):
    train, val = seg_data(make_store(seed=0)), seg_data(make_store(num_images=8, seed=1))
    inputs = [FeatureInput(("layer-1_patch",)), FeatureInput(("layer-2_patch",)),
              FeatureInput(("layer-1_patch", "layer-2_patch"))]
    result = run_segmentation_probe(train, val, inputs, None, SegmentationConfig(**QUICK, bn=bn, device="cpu"),
                                    seed=3, progress=False, verbose=False)
    found = json.loads(json.dumps({"records": result.records,
                                   **{k: result.summary[k] for k in ("mIoU", "mAcc", "aAcc", "chosen", "per_class")}}))
    assert found == RECORDED[bn]
