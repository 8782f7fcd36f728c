"""The linear depth head: BatchNorm + 1x1 conv over patch maps, depth from bins or by regression.

This is DINOv2's / DINOv3's linear depth probe ("lin. 1" on one layer, "lin. 4" on four), in plain
torch so that the cached-feature probe and the mmseg head (:mod:`sail_vision.mmseg.depth`) run the
same module and share its state-dict keys (``bn.*``, ``conv.*``).

- Inputs: a sequence of maps ``(B, C_i, h_i, w_i)``; every map is resized (bilinear,
  ``align_corners=False``) to the first one's size and the maps are concatenated along channels.
  With ``use_class_token=True`` each input is a pair ``(map, token)`` and the ``(B, C_i)`` token is
  broadcast over the map and concatenated to it (DINOv2's "lin." heads), doubling the channels.
- Output of :meth:`LinearDepthHead.forward`: ``n_bins`` logits per patch (``n_bins=1``: regression).
- :func:`logits_to_depth` turns them into metres: with bins, a distribution over ``n_bins`` depth
  centres (``linear`` or ``log`` spacing between ``min_depth`` and ``max_depth``) normalised as
  AdaBins / DINOv2 do (``linear``: ReLU + 0.1 then divide by the sum; ``softmax``; ``sigmoid`` then
  divide by the sum) and the expected depth; with one channel, ``ReLU(x) + min_depth``.

Defaults follow DINOv3's NYUv2 linear configuration (``dinov3/eval/depth/configs/config-nyu.yaml``:
256 outputs, depth range 0.001-10 m, BatchNorm, no class token; ``models/__init__.py``: linear bins,
linear normalisation; ``models/linear_head.py``: conv weights N(0, 0.01), bias 0). docs/depth.md cites them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: How the depth bins are spaced between ``min_depth`` and ``max_depth``.
BIN_SPACINGS = ("linear", "log")
#: How bin logits become a probability distribution (AdaBins / DINOv2 names).
NORMALISATIONS = ("linear", "softmax", "sigmoid")
#: AdaBins' / DINOv2's constant added after the ReLU of the "linear" normalisation.
LINEAR_NORM_EPS = 0.1


def check_depth_range(min_depth: float, max_depth: float) -> None:
    """Raise ``ValueError`` unless ``0 < min_depth < max_depth`` (both finite)."""
    if not (0.0 < float(min_depth) < float(max_depth) < float("inf")):
        raise ValueError(f"the depth range needs 0 < min_depth < max_depth, got min_depth={min_depth}, "
                         f"max_depth={max_depth}")


def depth_bins(n_bins: int, min_depth: float, max_depth: float, spacing: str = "linear", *,
               device: torch.device | str | None = None) -> torch.Tensor:
    """The ``n_bins`` depth centres (float32), from ``min_depth`` to ``max_depth`` inclusive."""
    check_depth_range(min_depth, max_depth)
    if spacing == "linear":
        return torch.linspace(min_depth, max_depth, n_bins, device=device, dtype=torch.float32)
    if spacing == "log":
        low, high = torch.log(torch.tensor([min_depth, max_depth], dtype=torch.float64)).tolist()
        return torch.exp(torch.linspace(low, high, n_bins, device=device, dtype=torch.float32))
    raise ValueError(f"bin spacing {spacing!r} is not one of {', '.join(BIN_SPACINGS)}")


def bin_probabilities(logits: torch.Tensor, normalisation: str = "linear") -> torch.Tensor:
    """``(B, n_bins, h, w)`` logits -> probabilities over the bin axis (dim 1)."""
    if normalisation == "linear":
        weights = torch.relu(logits) + LINEAR_NORM_EPS
        return weights / weights.sum(dim=1, keepdim=True)
    if normalisation == "softmax":
        return torch.softmax(logits, dim=1)
    if normalisation == "sigmoid":
        weights = torch.sigmoid(logits)
        return weights / weights.sum(dim=1, keepdim=True)
    raise ValueError(f"normalisation {normalisation!r} is not one of {', '.join(NORMALISATIONS)}")


def logits_to_depth(logits: torch.Tensor, *, min_depth: float, max_depth: float, spacing: str = "linear",
                    normalisation: str = "linear") -> torch.Tensor:
    """``(B, n, h, w)`` head outputs -> ``(B, 1, h, w)`` depth in metres, computed in float32.

    ``n == 1`` is regression (``ReLU(x) + min_depth``); ``n > 1`` is the expectation over ``n`` bins.
    """
    if logits.dim() != 4:
        raise ValueError(f"expected (B, n, h, w) logits, got shape {tuple(logits.shape)}")
    logits = logits.float()
    if logits.shape[1] == 1:
        return torch.relu(logits) + min_depth
    centres = depth_bins(logits.shape[1], min_depth, max_depth, spacing, device=logits.device)
    probabilities = bin_probabilities(logits, normalisation)
    return torch.einsum("bkhw,k->bhw", probabilities, centres).unsqueeze(1)


class LinearDepthHead(nn.Module):
    """BatchNorm then a 1x1 conv over concatenated patch maps; see the module docstring.

    Args:
        in_channels: channels of each input map, e.g. ``[4096]`` ("lin. 1") or ``[4096] * 4``.
        n_bins: output channels; ``1`` is plain regression. Default 256.
        min_depth, max_depth: the depth range in metres. Defaults 0.001 and 10.0 (NYUv2).
        bin_spacing: ``"linear"`` (default) or ``"log"``.
        normalisation: ``"linear"`` (default), ``"softmax"`` or ``"sigmoid"``.
        use_class_token: inputs are ``(map, token)`` pairs, the token concatenated to every patch.
            Default False.
        batch_norm: a BatchNorm before the conv (default True); False leaves an identity.
        norm_layer: builds the norm from the channel count (default ``nn.BatchNorm2d``); the mmseg
            head passes mmcv's builder so that ``SyncBN`` configs work.
    """

    def __init__(self, in_channels: int | Sequence[int], *, n_bins: int = 256, min_depth: float = 0.001,
                 max_depth: float = 10.0, bin_spacing: str = "linear", normalisation: str = "linear",
                 use_class_token: bool = False, batch_norm: bool = True,
                 norm_layer: Callable[[int], nn.Module] | None = None):
        super().__init__()
        in_channels = [in_channels] if isinstance(in_channels, int) else [int(c) for c in in_channels]
        if not in_channels or any(c <= 0 for c in in_channels):
            raise ValueError(f"in_channels must be positive channel counts, got {in_channels}")
        if int(n_bins) < 1:
            raise ValueError(f"n_bins must be at least 1 (1 = regression), got {n_bins}")
        check_depth_range(min_depth, max_depth)
        if bin_spacing not in BIN_SPACINGS:
            raise ValueError(f"bin_spacing {bin_spacing!r} is not one of {', '.join(BIN_SPACINGS)}")
        if normalisation not in NORMALISATIONS:
            raise ValueError(f"normalisation {normalisation!r} is not one of {', '.join(NORMALISATIONS)}")
        self.in_channels = in_channels
        self.n_bins = int(n_bins)
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)
        self.bin_spacing = bin_spacing
        self.normalisation = normalisation
        self.use_class_token = bool(use_class_token)
        self.channels = sum(in_channels) * (2 if self.use_class_token else 1)
        if batch_norm:
            self.bn = (norm_layer or nn.BatchNorm2d)(self.channels)
        else:
            self.bn = nn.Identity()
        self.conv = nn.Conv2d(self.channels, self.n_bins, kernel_size=1)
        nn.init.normal_(self.conv.weight, mean=0.0, std=0.01)
        nn.init.zeros_(self.conv.bias)

    def settings(self) -> dict:
        """The constructor's arguments (except ``norm_layer``), for provenance and rebuilding."""
        return {"in_channels": list(self.in_channels), "n_bins": self.n_bins, "min_depth": self.min_depth,
                "max_depth": self.max_depth, "bin_spacing": self.bin_spacing,
                "normalisation": self.normalisation, "use_class_token": self.use_class_token,
                "batch_norm": not isinstance(self.bn, nn.Identity)}

    def features(self, inputs: Sequence) -> torch.Tensor:
        """The concatenated ``(B, channels, h, w)`` input of the BatchNorm."""
        inputs = list(inputs)
        if len(inputs) != len(self.in_channels):
            raise ValueError(f"the head takes {len(self.in_channels)} input map(s), got {len(inputs)}")
        maps = []
        for i, item in enumerate(inputs):
            if self.use_class_token:
                if not isinstance(item, (tuple, list)) or len(item) != 2:
                    raise ValueError(f"input {i}: use_class_token=True needs a (map, token) pair")
                x, token = item
                maps.append(torch.cat([x, token[:, :, None, None].expand_as(x)], dim=1))
            else:
                maps.append(item)
        size = maps[0].shape[-2:]
        maps = [m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                for m in maps]
        return torch.cat(maps, dim=1)

    def forward(self, inputs: Sequence) -> torch.Tensor:
        """``(B, n_bins, h, w)`` logits (one channel: the regression output before its ReLU)."""
        return self.conv(self.bn(self.features(inputs)))

    def to_depth(self, logits: torch.Tensor) -> torch.Tensor:
        """Head outputs -> ``(B, 1, h, w)`` depth in metres (float32)."""
        return logits_to_depth(logits, min_depth=self.min_depth, max_depth=self.max_depth,
                               spacing=self.bin_spacing, normalisation=self.normalisation)

    def predict_depth(self, inputs: Sequence) -> torch.Tensor:
        """Depth in metres at the maps' resolution."""
        return self.to_depth(self.forward(inputs))
