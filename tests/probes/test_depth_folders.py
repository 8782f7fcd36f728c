"""Feature folders with depth maps meet the probes: the segmentation probe refuses them in one line."""

from __future__ import annotations

import numpy as np
import pytest


def test_a_segmentation_probe_refuses_depth_folders_in_one_line(tmp_path):
    from sail_vision.feature_store import write_feature_dir
    from sail_vision.probes.errors import ProbeDataError
    from sail_vision.probes.seg_data import SegmentationData

    write_feature_dir(tmp_path / "depth", {"layer-1_patch": np.zeros((2, 2, 2, 4), np.float32)},
                      masks=np.ones((2, 16, 16), np.float32), mask_meta={"depth_scale": 1000},
                      checkpoint={"config": {"vision_patch_size": 8}})
    with pytest.raises(ProbeDataError, match="holds depth maps, not segmentation masks"):
        SegmentationData.from_folder(tmp_path / "depth")
