"""``SAILLinearDepthHead``: the linear depth head (:mod:`sail_vision.probes.depth_head`) for mmseg.

Used with mmseg's ``DepthEstimator``, ``NYUDataset``, ``LoadDepthAnnotation``, ``SiLogLoss`` and
``DepthMetric`` (configs/sail/linear_sail-*_nyu-*.py, docs/depth.md). The head's parameters live in
``head`` (``decode_head.head.bn.*``, ``decode_head.head.conv.*`` in a segmentor checkpoint), the same
module the cached-feature depth probe trains.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..probes.depth_head import LinearDepthHead
from .compat import ensure_mmseg

ensure_mmseg()
from mmcv.cnn import build_norm_layer  # noqa: E402
from mmseg.models.decode_heads.decode_head import BaseDecodeHead  # noqa: E402
from mmseg.models.utils import resize  # noqa: E402
from mmseg.registry import MODELS  # noqa: E402
from torch import nn  # noqa: E402


@MODELS.register_module()
class SAILLinearDepthHead(BaseDecodeHead):
    """DINOv2 / DINOv3's linear depth head on SAIL's patch maps, predicting depth in metres.

    ``forward`` returns ``(B, 1, h, w)`` depth at the maps' resolution; mmseg resizes it
    (bilinear) to the label size for the loss and to the input size for prediction.

    Args:
        in_channels: channels of each selected map, e.g. ``[4096]`` or ``[4096] * 4``. Required.
        in_index: which backbone outputs to use (positions in its tuple). Default ``(0,)``.
        n_bins: depth bins (default 256, DINOv3's NYUv2 setting); 1 = plain regression.
        min_depth, max_depth: depth range in metres. Defaults 0.001 and 10.0 (NYUv2).
        bin_spacing: ``"linear"`` (default) or ``"log"``.
        normalisation: ``"linear"`` (default, AdaBins), ``"softmax"`` or ``"sigmoid"``.
        norm_cfg: the normalisation before the conv. Default ``dict(type='BN')``; ``None`` for none.
            ``dict(type='SyncBN')`` for multi-GPU training.
        loss_decode: the loss config(s). Default ``dict(type='SiLogLoss')`` (mmseg's).
        align_corners: for the bilinear resizes. Default False.
        init_cfg: mmengine init config. Default None (the head initialises itself: conv N(0, 0.01)).
    """

    def __init__(self, in_channels: int | Sequence[int], in_index: int | Sequence[int] = (0,), n_bins: int = 256,
                 min_depth: float = 0.001, max_depth: float = 10.0, bin_spacing: str = "linear",
                 normalisation: str = "linear", norm_cfg: dict | None = dict(type="BN"),
                 loss_decode: dict | Sequence[dict] = dict(type="SiLogLoss"), align_corners: bool = False,
                 init_cfg: dict | None = None):
        # BaseDecodeHead's own __init__ builds a classification conv this head does not have.
        super(BaseDecodeHead, self).__init__(init_cfg=init_cfg)
        in_channels = [in_channels] if isinstance(in_channels, int) else list(in_channels)
        in_index = [in_index] if isinstance(in_index, int) else list(in_index)
        if len(in_channels) != len(in_index):
            raise ValueError(f"SAILLinearDepthHead: in_channels {in_channels} and in_index {in_index} must have "
                             f"the same length")
        self.in_channels = in_channels
        self.in_index = in_index
        self.align_corners = align_corners
        self.num_classes = 1
        self.out_channels = 1
        self.norm_cfg = norm_cfg
        self.head = LinearDepthHead(
            in_channels, n_bins=n_bins, min_depth=min_depth, max_depth=max_depth, bin_spacing=bin_spacing,
            normalisation=normalisation, batch_norm=norm_cfg is not None,
            norm_layer=(lambda channels: build_norm_layer(norm_cfg, channels)[1]) if norm_cfg else None)
        losses = [loss_decode] if isinstance(loss_decode, dict) else list(loss_decode)
        built = [MODELS.build(cfg) for cfg in losses]
        self.loss_decode = built[0] if len(built) == 1 else nn.ModuleList(built)

    def init_weights(self) -> None:
        """Nothing beyond the head's own initialisation (and mmengine's ``init_cfg`` if given)."""
        if self.init_cfg:
            super(BaseDecodeHead, self).init_weights()

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.head.predict_depth([inputs[i] for i in self.in_index])

    def _stack_batch_gt(self, batch_data_samples) -> torch.Tensor:
        return torch.stack([sample.gt_depth_map.data for sample in batch_data_samples], dim=0)

    def loss_by_feat(self, depth: torch.Tensor, batch_data_samples) -> dict:
        """Resize the predicted depth to the ground truth's size and apply every loss."""
        target = self._stack_batch_gt(batch_data_samples)
        depth = resize(depth, size=target.shape[2:], mode="bilinear", align_corners=self.align_corners)
        losses = self.loss_decode if isinstance(self.loss_decode, nn.ModuleList) else [self.loss_decode]
        result = {}
        for loss in losses:
            value = loss(depth, target)
            result[loss.loss_name] = result[loss.loss_name] + value if loss.loss_name in result else value
        return result
