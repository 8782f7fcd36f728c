"""``SAILLinearHead``: DINOv2's linear segmentation head ("linear" / "linear4") for mmseg."""

from __future__ import annotations

from typing import Sequence

import torch

from .compat import ensure_mmseg

ensure_mmseg()
from mmcv.cnn import build_norm_layer  # noqa: E402
from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402


@MODELS.register_module()
class SAILLinearHead(BaseDecodeHead):
    """BatchNorm then a 1x1 conv over the selected maps, concatenated along channels.

    The maps picked by ``in_index`` are resized (bilinear) to the first one's size and
    concatenated; the logits are upsampled to the label size by mmseg's loss / predict. One
    index is DINOv2's "linear" head, four indices its "linear4" (multi-layer) head.

    Args:
        in_channels: channels of each selected map, e.g. ``[4096]`` or ``[4096] * 4``. Required.
        in_index: which backbone outputs to use (positions in the backbone's tuple). Default
            ``(0,)``; a list of several concatenates them.
        num_classes: number of classes. Required.
        norm_cfg: the normalisation before the conv. Default ``dict(type='BN')``; use
            ``dict(type='SyncBN')`` for multi-GPU training (mmengine reverts it to BN when
            training is not distributed; ``sail_vision.mmseg.inference`` reverts it on CPU).
        dropout_ratio: dropout before the conv. Default ``0.0`` (DINOv2's linear head has none).
        **kwargs: anything else ``BaseDecodeHead`` takes (loss_decode, align_corners, ...).
    """

    def __init__(self, in_channels: int | Sequence[int], num_classes: int, in_index: int | Sequence[int] = (0,),
                 norm_cfg: dict | None = None, dropout_ratio: float = 0.0, **kwargs):
        in_channels = [in_channels] if isinstance(in_channels, int) else list(in_channels)
        in_index = [in_index] if isinstance(in_index, int) else list(in_index)
        if len(in_channels) != len(in_index):
            raise ValueError(f"SAILLinearHead: in_channels {in_channels} and in_index {in_index} must have "
                             f"the same length")
        kwargs.pop("input_transform", None)
        kwargs.pop("channels", None)
        super().__init__(in_channels=in_channels, channels=sum(in_channels), num_classes=num_classes,
                         in_index=in_index, input_transform="resize_concat",
                         norm_cfg=norm_cfg or dict(type="BN"), dropout_ratio=dropout_ratio, **kwargs)
        _, self.bn = build_norm_layer(self.norm_cfg, self.channels)

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        features = self._transform_inputs(inputs)
        return self.cls_seg(self.bn(features))
