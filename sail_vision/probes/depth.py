"""``probe --task depth``: DINOv2's / DINOv3's linear depth head on cached patch features and depth maps, as a
method of the one probe runner (:func:`~.runner.run_probe`).

The grid (lr x weight decay per feature input) trains in one pass (:mod:`.depth_train`, the segmentation
probe's data path and loop), is selected on a held-out part of train's source images by RMSE (then abs_rel,
then d1), refit on all train, and scored once on val with mmseg's ``DepthMetric`` arithmetic
(:mod:`.depth_metrics`: per image, averaged; depths in ``(min_depth_eval, max_depth_eval)``, NYU's eval crop
on 480x640 maps). The chosen head is written as ``head.safetensors`` + ``head.json`` and as an mmseg
checkpoint (``mmseg_head.pth``: ``decode_head.head.bn.*`` / ``decode_head.head.conv.*`` of
``SAILLinearDepthHead``, i.e. the state of :class:`~.depth_head.LinearDepthHead`), with a picture of
image / ground truth / prediction / error for the first val images.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import ClassVar, Mapping, Sequence

import numpy as np

from .dense import DenseGridMethod
from .depth_metrics import DEPTH_METRICS, depth_arithmetic, nyu_crop_applies
from .depth_train import (DepthConfig, DepthData, DepthHeadStack, check_depth_train_val, depth_mmseg_state_dict,
                          depth_stack_factory, evaluate_depth_stacks)
from .errors import ProbeDataError
from .inputs import FeatureInput
from .linear import grid_point_name
from .methods import record, register_method
from .results import (GRID_FILE, HEAD_JSON_FILE, HEAD_TENSORS_FILE, LAYERS_PLOT_FILE, PLOT_FILE, SUMMARY_FILE)
from .seg_export import export_mmseg_checkpoint, mmseg_head_settings, train_checkpoint, train_norm
from .seg_heads import SegmentationHead
from .seg_train import train_seg_grid

METHOD = "depth-linear"
#: Selection order: RMSE (lower better), then abs_rel, then d1 (see ``methods.LOWER_IS_BETTER``).
SELECTION_METRICS = ("rmse", "abs_rel", "d1")
PREDICTIONS_PLOT_FILE = "predictions.png"
MMSEG_CHECKPOINT_FILE = "mmseg_head.pth"
#: Every file a depth probe run writes (and the only ones ``--overwrite`` removes).
DEPTH_RUN_FILES = (GRID_FILE, SUMMARY_FILE, HEAD_TENSORS_FILE, HEAD_JSON_FILE, PLOT_FILE, LAYERS_PLOT_FILE,
                   PREDICTIONS_PLOT_FILE, MMSEG_CHECKPOINT_FILE)


@register_method
class DepthMethod(DenseGridMethod):
    """The linear depth head as a method of :func:`~.runner.run_probe` (see the module docstring)."""

    name: ClassVar[str] = METHOD
    task: ClassVar[str] = "depth"
    summary: ClassVar[str] = "DINOv2's linear depth head (BN + 1x1 conv, 256 bins) on patch features and depth maps"
    hyperparameters: ClassVar[tuple[str, ...]] = ("lr", "weight_decay")
    metrics: ClassVar[tuple[str, ...]] = SELECTION_METRICS
    run_files: ClassVar[tuple[str, ...]] = DEPTH_RUN_FILES
    result_name: ClassVar[str] = "depth probe result"
    config_class: ClassVar[type] = DepthConfig

    def validate(self, train, val, inputs):
        check_depth_train_val(train, val, inputs)
        return None, val

    def _train(self, train, inputs, rows, grid=None, progress=True):
        return train_seg_grid(train, inputs, rows, self.config, grid=grid, progress=progress,
                              make_stack=depth_stack_factory(self.config), what="depth")

    def fit_grid(self, train, inputs, num_classes, fit_rows, held_rows, *, progress: bool = True) -> list[dict]:
        config = self.config
        trained = self._train(train, inputs, fit_rows, progress=progress)
        self._trained = (np.asarray(fit_rows), trained)
        scores = {}
        if held_rows is not None:
            scores = evaluate_depth_stacks(trained.stacks, inputs, train, held_rows, config).metrics
            if all(m["rmse"] is None for heads in scores.values() for m in heads):
                raise ProbeDataError(f"{train.source}: no held-out image has ground truth within "
                                     f"--eval-depth-range {config.min_depth_eval:g},{config.max_depth_eval:g} "
                                     f"(metres), so the grid cannot be compared; check the range and the depth "
                                     f"scale the features were extracted with")
        return [record(grid_point_name(fi.name, lr, wd), METHOD, fi, scores[fi.name][index] if scores else None,
                       SELECTION_METRICS, lr=lr, weight_decay=wd)
                for fi in inputs for index, (lr, wd) in enumerate(config.grid)]

    def refit(self, train, chosen: Mapping, num_classes, rows: np.ndarray, *, progress: bool = True) -> SegmentationHead:
        feature_input = FeatureInput(tuple(chosen["parts"]))
        point = (chosen["lr"], chosen["weight_decay"])
        kept = self._trained
        if kept is not None and np.array_equal(kept[0], rows) and feature_input.name in kept[1].stacks:
            tensors = kept[1].stacks[feature_input.name].head(self.config.grid.index(point))
        else:
            tensors = self._train(train, [feature_input], rows, grid=[point], progress=progress) \
                .stacks[feature_input.name].head(0)
        return SegmentationHead.from_tensors(feature_input, tensors, train.dims(feature_input.parts))

    def evaluate(self, probe, val) -> tuple[dict, None]:
        head = probe.head
        stack = DepthHeadStack.from_head(head, self.config)
        evaluation = evaluate_depth_stacks({head.feature_input.name: stack}, [head.feature_input], val,
                                           np.arange(val.num_images), self.config, keep=self.config.show_images)
        found = evaluation.metrics[head.feature_input.name][0]
        self._evaluation = (found, evaluation, val)
        return dict(found), None

    def settings(self) -> dict:
        c = self.config
        return {"optimizer": c.optimizer, "epochs": c.epochs, "batch_size": c.batch_size, "device": str(c.device),
                "bn": c.bn, "head": c.head_settings()}

    def head_meta(self, train, head: SegmentationHead, chosen: Mapping, trained_rows, num_classes) -> dict:
        return {"method": METHOD, "task": "depth", "feature": head.feature_input.name,
                "parts": list(head.feature_input.parts), "part_dims": head.part_dims, "dim": head.dim,
                "num_classes": head.num_classes, "patch_size": train.patch_size, "grid_point": chosen["name"],
                "train": train.source, "provenance": train.provenance(), **self.settings(),
                "standardized": head.standardizer is not None}

    def mmseg_settings(self, train, head: SegmentationHead) -> dict:
        """The config values that run the exported head in an mmseg ``DepthEstimator``."""
        settings = mmseg_head_settings(head, norm=train_norm(train), checkpoint=train_checkpoint(train))
        settings.pop("model.decode_head.num_classes")
        return {**settings, **{f"model.decode_head.{k}": v for k, v in self.config.head_settings().items()}}

    def summary_extras(self, train, head: SegmentationHead) -> dict:
        c = self.config
        extras = {"task": "depth", "num_train": train.num_images, "checkpoint": train_checkpoint(train),
                  "metrics_arithmetic": depth_arithmetic(),
                  "evaluation": {"min_depth_eval": c.min_depth_eval, "max_depth_eval": c.max_depth_eval,
                                 "nyu_crop": "rows 45:471, cols 41:601 of maps of 480x640 only (mmseg "
                                             "DepthMetric crop_type='nyu_crop'); none on other sizes",
                                 "averaged": "per image, then the mean over images (DepthMetric)"},
                  "mmseg": self.mmseg_settings(train, head)}
        if self._evaluation is not None:
            found, evaluation, val = self._evaluation
            extras.update({m: found[m] for m in DEPTH_METRICS})
            sizes = {tuple(int(v) * val.patch_size for v in g) for g in val.grids()}
            extras["evaluation"]["nyu_crop_applied"] = any(nyu_crop_applies(s) for s in sizes)
        return extras

    def write_outputs(self, out: Path, train, head: SegmentationHead, summary: Mapping) -> dict:
        export_mmseg_checkpoint(head, out / MMSEG_CHECKPOINT_FILE, checkpoint=train_checkpoint(train),
                                state_dict=depth_mmseg_state_dict(head, self.config),
                                settings=self.mmseg_settings(train, head), source="linear depth probe",
                                extra_meta={"grid_point": summary["chosen"], "seed": summary["seed"],
                                            "val_rmse": summary.get("rmse")})
        files = {"mmseg_checkpoint": MMSEG_CHECKPOINT_FILE, "predictions_plot": None}
        if self._evaluation is not None and self._evaluation[1].shown:
            plot_depth_predictions(self._evaluation[1].shown, self._evaluation[2], out / PREDICTIONS_PLOT_FILE)
            files["predictions_plot"] = PREDICTIONS_PLOT_FILE
        return files

    @classmethod
    def load_head(cls, meta: Mapping, tensors, **_):
        raise ProbeDataError(f"{meta.get('folder', 'this folder')}: a depth head is applied with the backbone: "
                             f"python tools/test.py CONFIG {MMSEG_CHECKPOINT_FILE} (see its summary.json \"mmseg\")")


def plot_depth_predictions(shown, data: DepthData, out_file: Path) -> Path:
    """A row per val image: the image (when its file can be read) | ground truth | prediction | absolute error,
    depths on one colour scale per row, pixels without a measurement left blank in the ground truth and error."""
    from .plot import pyplot, save_figure

    plt = pyplot()
    figure, axes = plt.subplots(len(shown), 4, figsize=(12.0, 3.0 * len(shown)), squeeze=False)
    paths = list(getattr(data.store, "paths", []) or [])
    for (index, pred, gt), row in zip(shown, axes):
        measured = gt > 0
        top = float(max(gt.max(initial=0.0), pred.max(initial=0.0))) or 1.0
        picture = _image(paths[index] if index < len(paths) else None, gt.shape)
        error = np.where(measured, np.abs(pred - gt), np.nan)
        panels = ((picture, "image", None), (np.where(measured, gt, np.nan), "ground truth (m)", top),
                  (pred, "prediction (m)", top), (error, "|error| (m)", None))
        for axis, (array, title, vmax) in zip(row, panels):
            if array is None:
                axis.text(0.5, 0.5, "image not readable", ha="center", va="center")
            elif array.ndim == 3:
                axis.imshow(array)
            else:
                shown_image = axis.imshow(array, cmap="magma" if "error" in title else "viridis", vmin=0.0, vmax=vmax)
                figure.colorbar(shown_image, ax=axis, fraction=0.046)
            axis.set_title(f"image {index}: {title}" if title == "image" else title, fontsize=9)
            axis.axis("off")
    figure.tight_layout()
    return save_figure(figure, out_file)


def _image(path: str | None, size: tuple[int, int]) -> np.ndarray | None:
    """The val image resized to its depth map (what the features saw, up to the exact crop), or None."""
    if not path:
        return None
    try:
        from PIL import Image

        from ..preprocessing import decode_image

        return np.asarray(decode_image(path.rsplit("#view=", 1)[0]).resize((size[1], size[0]), Image.BILINEAR))
    except Exception:  # the picture is informative: a moved image file must not fail the probe
        return None


def run_depth_probe(train: DepthData, val: DepthData | None, inputs: Sequence[FeatureInput], out: str | Path | None,
                    config: DepthConfig | None = None, *, holdout_fraction: float = 0.1, seed: int = 0,
                    refit: bool = True, overwrite: bool = False, progress: bool = True, verbose: bool = True,
                    protocol: dict | None = None):
    """:func:`~.runner.run_probe` with :class:`DepthMethod` (see the module docstring)."""
    from .runner import run_probe

    method = DepthMethod(replace(config or DepthConfig(), seed=seed))
    return run_probe(train, val, inputs, out, method=method, holdout_fraction=holdout_fraction, seed=seed,
                     refit=refit, overwrite=overwrite, progress=progress, verbose=verbose, protocol=protocol)
