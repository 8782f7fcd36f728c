"""``LinearSegHead``: DINOv2's linear segmentation head as a plain torch module (BatchNorm2d over the
channels, then a 1x1 conv named ``conv_seg``), the one class whose state a segmentation probe exports.

Its parameter names are those of :class:`sail_vision.mmseg.heads.SAILLinearHead` (``bn.*``,
``conv_seg.*``), so ``decode_head.`` + this module's ``state_dict()`` loads strictly into an mmseg
EncoderDecoder. Pure torch: importing it never imports mmseg.
"""

from __future__ import annotations

import torch
from torch import nn

#: BatchNorm's epsilon (torch and mmcv's default), used when the statistics are exported as BN buffers.
BN_EPS = 1e-5
#: BatchNorm's running-statistics momentum (torch and mmcv's default), for ``bn="batch"``.
BN_MOMENTUM = 0.1


class LinearSegHead(nn.Module):
    """BatchNorm2d(``in_channels``) then Conv2d(``in_channels``, ``num_classes``, 1) on (B, D, h, w) maps."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(int(in_channels), eps=BN_EPS, momentum=BN_MOMENTUM)
        self.conv_seg = nn.Conv2d(int(in_channels), int(num_classes), kernel_size=1)

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.conv_seg(self.bn(maps))
