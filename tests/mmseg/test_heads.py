"""SAILLinearHead: BN then a 1x1 conv over the resized, concatenated maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sail_vision.mmseg import SAILLinearHead


def test_linear4_head_matches_bn_then_conv_over_resized_concatenation():
    torch.manual_seed(0)
    head = SAILLinearHead(in_channels=[8, 8, 4], in_index=[0, 2, 3], num_classes=5).eval()
    with torch.no_grad():
        head.bn.running_mean.uniform_(-1, 1)
        head.bn.running_var.uniform_(0.5, 2)
    maps = [torch.randn(2, 8, 6, 6), torch.randn(2, 1, 2, 2), torch.randn(2, 8, 3, 3), torch.randn(2, 4, 6, 6)]
    logits = head(maps)
    assert logits.shape == (2, 5, 6, 6)
    joined = torch.cat([maps[0], F.interpolate(maps[2], size=(6, 6), mode="bilinear", align_corners=False),
                        maps[3]], dim=1)
    expected = head.conv_seg(head.bn(joined))
    torch.testing.assert_close(logits, expected)
    assert isinstance(head.bn, torch.nn.BatchNorm2d)


def test_single_layer_head_and_mismatched_arguments():
    head = SAILLinearHead(in_channels=16, num_classes=3)
    assert head.in_index == [0] and head.channels == 16
    with pytest.raises(ValueError, match="same length"):
        SAILLinearHead(in_channels=[16, 16], in_index=[0], num_classes=3)
