"""What a segmentation probe exports: the mmseg checkpoint of the chosen head (through
:class:`~.seg_module.LinearSegHead`), the config values that run it, and the predictions picture."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import torch

from .seg_heads import SegmentationHead

if TYPE_CHECKING:
    from .seg_data import SegmentationData


def mmseg_head_settings(head: SegmentationHead, norm: bool | None = None) -> dict:
    """The config values an mmseg model needs to run this head with the SAIL backbone.

    ``layer-K_patch`` is hidden state K, which is what ``SAILBackbone(out_indices=[K])`` returns (both
    count 0 = embeddings .. L = last block with the final norm). ``norm``: whether the features were
    extracted with ``--norm`` (the final RMSNorm on intermediate layers too), the backbone's ``norm``;
    None when unknown (then left out)."""
    from .inputs import parse_feature_name

    layers = [parse_feature_name(p)[0] for p in head.feature_input.parts]
    settings = {"model.backbone.out_indices": layers if all(layer is not None for layer in layers) else None}
    if norm is not None:
        settings["model.backbone.norm"] = bool(norm)
    settings.update({"model.decode_head.in_channels": list(head.part_dims),
                     "model.decode_head.in_index": list(range(len(head.part_dims))),
                     "model.decode_head.num_classes": head.num_classes})
    return settings


def train_norm(data: "SegmentationData") -> bool | None:
    """Whether ``data``'s features were extracted with ``--norm`` (the manifest's preprocessing), None if unknown."""
    norm = (data.manifest.get("preprocessing") or {}).get("norm")
    return None if norm is None else bool(norm)


def mmseg_cfg_options(settings: Mapping) -> list[str]:
    """``--cfg-options`` arguments (KEY=VALUE) of :func:`mmseg_head_settings`' values, None values left out."""
    def text(value) -> str:
        return str(value) if isinstance(value, bool) else json.dumps(value).replace(" ", "")

    return [f"{key}={text(value)}" for key, value in settings.items() if value is not None]


def export_mmseg_checkpoint(head: SegmentationHead, path: str | Path, *, classes: Sequence[str] | None = None,
                            palette=None, norm: bool | None = None, extra_meta: Mapping | None = None) -> Path:
    """Write ``head`` as an mmengine checkpoint (``meta`` + ``state_dict``) of an EncoderDecoder with a
    frozen SAIL backbone and a SAILLinearHead; only tensors and plain values, so it loads with
    ``torch.load(weights_only=True)`` (and therefore with tools/test.py)."""
    try:
        import mmengine

        mmengine_version = mmengine.__version__
    except ImportError:  # the export needs only torch; the version is informative
        mmengine_version = None
    from .. import __version__

    names = list(classes) if classes else [str(i) for i in range(head.num_classes)]
    meta = {"mmengine_version": mmengine_version, "epoch": 0, "iter": 0,
            "time": time.strftime("%Y%m%d_%H%M%S"),
            "dataset_meta": {"classes": names,
                             "palette": None if palette is None else np.asarray(palette).astype(int).tolist()},
            "sail_vision": {"version": __version__, "source": "linear segmentation probe",
                            "feature": head.feature_input.name, "parts": list(head.feature_input.parts),
                            "config": mmseg_head_settings(head, norm=norm), **dict(extra_meta or {})}}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"meta": meta, "state_dict": head.mmseg_state_dict()}, tmp)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------- outputs
def colourise(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 picture of a label map; ignored (and unknown) pixels black."""
    picture = np.zeros((*mask.shape, 3), np.uint8)
    known = mask < len(palette)
    picture[known] = palette[mask[known]]
    return picture


def plot_predictions(shown: Sequence[tuple[int, np.ndarray, np.ndarray]], palette: np.ndarray, out_file: Path,
                     classes: Sequence[str]) -> Path:
    """A row per val image: prediction | ground truth, in the palette's colours, with a legend."""
    from matplotlib.patches import Patch

    from .plot import _pyplot, _save

    plt = _pyplot()
    figure, axes = plt.subplots(len(shown), 2, figsize=(6.4, 3.0 * len(shown)), squeeze=False)
    for (index, pred, gt), row in zip(shown, axes):
        for axis, mask, title in ((row[0], pred, f"image {index}: prediction"), (row[1], gt, "ground truth")):
            axis.imshow(colourise(mask, palette), interpolation="nearest")
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    handles = [Patch(color=palette[i] / 255.0, label=name) for i, name in enumerate(classes[:20])]
    figure.legend(handles=handles, loc="lower center", ncol=min(5, len(handles)), fontsize=7)
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(figure, out_file)


