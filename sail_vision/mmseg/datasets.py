"""``SyntheticColourDataset``: the demo's synthetic data (see :mod:`sail_vision.mmseg.synthetic`) in mmseg."""

from __future__ import annotations

from .compat import ensure_mmseg

ensure_mmseg()
from mmseg.datasets import BaseSegDataset  # noqa: E402
from mmseg.registry import DATASETS  # noqa: E402

#: The synthetic classes, each painted in its own well separated RGB colour (labels 1..4 on disk).
CLASS_NAMES = ("red", "green", "blue", "yellow")
CLASS_COLOURS = ((200, 40, 40), (40, 170, 40), (40, 60, 210), (220, 210, 50))


@DATASETS.register_module()
class SyntheticColourDataset(BaseSegDataset):
    """The synthetic data: four colour classes named after their colours.

    Reads ADE20K's layout (``.jpg`` images, ``.png`` label maps where 0 is "other") with
    ``reduce_zero_label=True``, so label k is class k-1 and 0 is ignored. Takes every other
    argument of mmseg's ``BaseSegDataset`` (data_root, data_prefix, pipeline...). The classes are
    a class attribute (``METAINFO``), as mmseg's own datasets have them, because some of mmseg's
    tools (``confusion_matrix.py``) read them from there.
    """

    METAINFO = dict(classes=CLASS_NAMES, palette=[list(c) for c in CLASS_COLOURS])

    def __init__(self, img_suffix: str = ".jpg", seg_map_suffix: str = ".png", reduce_zero_label: bool = True,
                 **kwargs):
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix,
                         reduce_zero_label=reduce_zero_label, **kwargs)
