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


def mmseg_head_settings(head: SegmentationHead, norm: bool | None = None, checkpoint: str | None = None) -> dict:
    """The config values an mmseg model needs to run this head with the SAIL backbone.

    ``layer-K_patch`` is hidden state K, which is what ``SAILBackbone(out_indices=[K])`` returns (both
    count 0 = embeddings .. L = last block with the final norm). ``norm``: whether the features were
    extracted with ``--norm`` (the final RMSNorm on intermediate layers too), the backbone's ``norm``;
    None when unknown (then left out). ``checkpoint``: the SAIL checkpoint the features came from (the
    feature folder's manifest), the backbone's ``checkpoint``; None when unknown (then left out)."""
    from .inputs import parse_feature_name

    layers = [parse_feature_name(p)[0] for p in head.feature_input.parts]
    settings = {"model.backbone.out_indices": layers if all(layer is not None for layer in layers) else None}
    if norm is not None:
        settings["model.backbone.norm"] = bool(norm)
    if checkpoint is not None:
        settings["model.backbone.checkpoint"] = str(checkpoint)
    settings.update({"model.decode_head.in_channels": list(head.part_dims),
                     "model.decode_head.in_index": list(range(len(head.part_dims))),
                     "model.decode_head.num_classes": head.num_classes})
    return settings


def train_norm(data: "SegmentationData") -> bool | None:
    """Whether ``data``'s features were extracted with ``--norm`` (the manifest's preprocessing), None if unknown."""
    norm = (data.manifest.get("preprocessing") or {}).get("norm")
    return None if norm is None else bool(norm)


def train_checkpoint(data: "SegmentationData") -> str | None:
    """The checkpoint path ``data``'s features were extracted with (the manifest's), None if unrecorded."""
    path = (data.manifest.get("checkpoint") or {}).get("path")
    return None if not path else str(path)


def mmseg_cfg_options(settings: Mapping) -> list[str]:
    """``--cfg-options`` arguments (KEY=VALUE) of :func:`mmseg_head_settings`' values, None values left out
    (strings, such as the checkpoint path, as they are: mmengine's DictAction takes them unquoted)."""
    def text(value) -> str:
        if isinstance(value, (bool, str)):
            return str(value)
        return json.dumps(value).replace(" ", "")

    return [f"{key}={text(value)}" for key, value in settings.items() if value is not None]


def export_mmseg_checkpoint(head: SegmentationHead, path: str | Path, *, classes: Sequence[str] | None = None,
                            palette=None, norm: bool | None = None, checkpoint: str | None = None,
                            extra_meta: Mapping | None = None, state_dict: Mapping | None = None,
                            settings: Mapping | None = None, source: str = "linear segmentation probe") -> Path:
    """Write ``head`` as an mmengine checkpoint (``meta`` + ``state_dict``) of an EncoderDecoder with a
    frozen SAIL backbone and a SAILLinearHead; only tensors and plain values, so it loads with
    ``torch.load(weights_only=True)`` (and therefore with tools/test.py). A depth probe passes its own
    ``state_dict`` (``decode_head.head.*``), config ``settings`` and ``source``, and no ``classes``."""
    try:
        import mmengine

        mmengine_version = mmengine.__version__
    except ImportError:  # the export needs only torch; the version is informative
        mmengine_version = None
    from .. import __version__

    names = list(classes) if classes else ([str(i) for i in range(head.num_classes)] if state_dict is None else None)
    meta = {"mmengine_version": mmengine_version, "epoch": 0, "iter": 0,
            "time": time.strftime("%Y%m%d_%H%M%S"),
            "dataset_meta": {"classes": names,
                             "palette": None if palette is None else np.asarray(palette).astype(int).tolist()},
            "sail_vision": {"version": __version__, "source": source,
                            "feature": head.feature_input.name, "parts": list(head.feature_input.parts),
                            "config": dict(settings) if settings is not None else
                            mmseg_head_settings(head, norm=norm, checkpoint=checkpoint), **dict(extra_meta or {})}}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save({"meta": meta, "state_dict": dict(state_dict) if state_dict is not None else head.mmseg_state_dict()},
               tmp)
    tmp.replace(path)
    return path


# ---------------------------------------------------------------------------------- outputs
def colourise(mask: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 picture of a label map; ignored (and unknown) pixels black."""
    picture = np.zeros((*mask.shape, 3), np.uint8)
    known = mask < len(palette)
    picture[known] = palette[mask[known]]
    return picture


def classes_present(shown: Sequence[tuple[int, np.ndarray, np.ndarray]], num_classes: int) -> list[int]:
    """Sorted classes appearing in the predictions or ground truths of ``shown`` (ignored pixels left out)."""
    values = np.unique(np.concatenate([np.concatenate([pred.ravel(), gt.ravel()]) for _, pred, gt in shown]))
    return [int(c) for c in values if c < num_classes]


def plot_confusion(matrix: np.ndarray, classes: Sequence[str], out_file: Path, *, max_labels: int = 40) -> Path:
    """The confusion matrix as a picture: each true class's row as shares of its pixels (rows without
    pixels blank); class names on the axes up to ``max_labels`` classes."""
    from .plot import pyplot, save_figure

    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        shares = np.where(totals > 0, matrix / totals, np.nan)
    size = min(12.0, 3.0 + 0.18 * len(classes))
    figure, axis = pyplot().subplots(figsize=(size, size))
    image = axis.imshow(shares, vmin=0.0, vmax=1.0, cmap="viridis", interpolation="nearest")
    figure.colorbar(image, ax=axis, fraction=0.046, label="share of the true class's pixels")
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class")
    if len(classes) <= max_labels:
        axis.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
        axis.set_yticks(range(len(classes)), classes, fontsize=7)
    axis.set_title("val confusion (rows: true class)")
    figure.tight_layout()
    return save_figure(figure, out_file)


def plot_predictions(shown: Sequence[tuple[int, np.ndarray, np.ndarray]], palette: np.ndarray, out_file: Path,
                     classes: Sequence[str]) -> Path:
    """A row per val image: prediction | ground truth, in the palette's colours, with a legend of every
    class present in the pictures (predicted or true), and only those."""
    from matplotlib.patches import Patch

    from .plot import pyplot, save_figure

    plt = pyplot()
    present = classes_present(shown, len(classes))
    legend_inches = 0.2 + 0.17 * -(-len(present) // 5)  # five entries a row
    height = 3.0 * len(shown) + legend_inches
    figure, axes = plt.subplots(len(shown), 2, figsize=(6.4, height), squeeze=False)
    for (index, pred, gt), row in zip(shown, axes):
        for axis, mask, title in ((row[0], pred, f"image {index}: prediction"), (row[1], gt, "ground truth")):
            axis.imshow(colourise(mask, palette), interpolation="nearest")
            axis.set_title(title, fontsize=9)
            axis.axis("off")
    handles = [Patch(color=palette[i] / 255.0, label=classes[i]) for i in present]
    figure.legend(handles=handles, loc="lower center", ncol=max(1, min(5, len(handles))), fontsize=7)
    figure.tight_layout(rect=(0, legend_inches / height, 1, 1))
    return save_figure(figure, out_file)


