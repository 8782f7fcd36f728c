"""Inference with a trained segmentor (one image, or several of any sizes sharing forwards) and a
colour overlay with a legend."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import InputError
from ..preprocessing import decode_image
from .checkpoints import check_state_dict_matches, load_from_local_weights_only
from .config_checks import check_config, load_config, sail_backbones


def load_segmentor(config: str | Path, checkpoint: str | Path | None, device: str = "cpu",
                   cfg_options=None):
    """``mmseg.apis.init_model`` for a config trained with tools/train.py, usable on CPU.

    ``cfg_options`` (``KEY=VALUE`` strings or a dict) override config entries. The config, its
    paths and the checkpoint are checked first (one-line errors; the checkpoint is only loaded with
    ``torch.load(weights_only=True)`` and must hold exactly the model's weights); a SAIL backbone is
    read straight onto ``device``; SyncBN becomes BN when the device is the CPU.
    """
    from mmengine.model import revert_sync_batchnorm
    from mmseg.apis import init_model

    cfg = load_config(config, cfg_options)
    for _, backbone in sail_backbones(cfg):
        backbone.setdefault("device", str(device))
    if checkpoint is not None:
        cfg.load_from = str(checkpoint)
    check_config(cfg)
    model = init_model(cfg, None if checkpoint is None else str(checkpoint), device=device)
    if checkpoint is not None:  # init_model only warns when weights are missing or of another shape
        check_state_dict_matches(model, _state_dict(checkpoint), checkpoint)
    if str(device).startswith("cpu"):
        model = revert_sync_batchnorm(model)
    return model


def _state_dict(checkpoint) -> dict:
    """The checkpoint's tensors, memory-mapped (nothing is read but their shapes)."""
    import torch

    try:
        loaded = torch.load(str(checkpoint), map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # not torch's zip format: read it (it already passed the safe loader)
        loaded = load_from_local_weights_only(str(checkpoint), map_location="cpu")
    return loaded.get("state_dict", loaded)


def segment(model, image) -> np.ndarray:
    """Predicted class index map (H, W) int64 for one image (path, PIL image or uint8 array)."""
    from mmseg.apis import inference_model

    return _class_map(inference_model(model, _bgr(image)))


def segment_images(model, images) -> list[np.ndarray]:
    """Predicted class index maps (H_i, W_i) int64 for several images of any sizes, in order.

    Each map equals :func:`segment` of that image alone. With a ``SAILBackbone`` and whole-image
    inference (``test_cfg.mode='whole'``) the images share backbone forwards: each goes through the
    config's test pipeline and data preprocessor on its own (so mmseg's resizing and any padding of
    its ``test_cfg`` are as for one image), then the images, grouped by ``packing.plan_packs`` into
    chunks of the backbone's ``max_batch_tokens``, go through the backbone one chunk at a time as a
    list, which it runs as its ``batching`` says (``'packed'`` by default: images of different sizes
    in one sequence; see :class:`~sail_vision.mmseg.SAILBackbone`); neck, head and mmseg's
    post-processing then run per image. Other backbones and slide inference (fixed-size crops that
    mmseg batches itself) run image by image through :func:`segment`.
    """
    import torch

    from ..packing import plan_packs
    from .backbone import SAILBackbone

    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, SAILBackbone) or model.test_cfg.get("mode", "whole") != "whole":
        return [segment(model, image) for image in images]
    pipeline = _test_pipeline(model)
    samples = [pipeline(dict(img=_bgr(image))) for image in images]  # uint8 (3, H, W) inputs until their chunk
    lengths = [backbone.sequence_length(*sample["inputs"].shape[-2:]) for sample in samples]
    predictions = [None] * len(samples)
    with torch.no_grad():
        for chunk in plan_packs(lengths, backbone.max_batch_tokens):
            batches = [model.data_preprocessor(dict(inputs=[samples[i]["inputs"]],
                                                    data_samples=[samples[i]["data_samples"]]), False)
                       for i in chunk]
            features = backbone([batch["inputs"][0] for batch in batches])
            for i, batch, maps in zip(chunk, batches, features):
                x = model.neck(maps) if model.with_neck else maps
                logits = model.decode_head.predict(x, [batch["data_samples"][0].metainfo], model.test_cfg)
                predictions[i] = _class_map(model.postprocess_result(logits, batch["data_samples"])[0])
                samples[i] = None
    return predictions


def _bgr(image) -> np.ndarray:
    """An image (path, PIL image or uint8 array) as the contiguous BGR array mmseg's pipelines expect."""
    return np.ascontiguousarray(np.asarray(decode_image(image))[:, :, ::-1])


def _class_map(result) -> np.ndarray:
    return result.pred_sem_seg.data[0].cpu().numpy().astype(np.int64)


def _test_pipeline(model):
    """The config's test pipeline for arrays, as ``mmseg.apis.inference_model`` builds it (without
    changing ``model.cfg``): no ``LoadAnnotations``, the first step loading from an array."""
    from mmengine.dataset import Compose

    steps = [dict(step) for step in model.cfg.test_pipeline if step.get("type") != "LoadAnnotations"]
    steps[0]["type"] = "LoadImageFromNDArray"
    return Compose(steps)


def save_overlay(image, prediction: np.ndarray, classes, palette, out: str | Path, *, alpha: float = 0.5,
                 dpi: int = 100) -> Path:
    """Write the image with the prediction painted over it and a legend of the classes present."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha={alpha}: use a value in [0, 1]")
    rgb = np.asarray(decode_image(image)).astype(np.float32)
    if prediction.shape != rgb.shape[:2]:
        raise InputError(f"prediction shape {prediction.shape} does not match the image {rgb.shape[:2]}")
    palette = np.asarray(palette, dtype=np.float32)
    colours = palette[np.clip(prediction, 0, len(palette) - 1)]
    blended = ((1 - alpha) * rgb + alpha * colours).clip(0, 255).astype(np.uint8)
    present, counts = np.unique(prediction, return_counts=True)
    order = np.argsort(-counts)
    handles = [Patch(color=palette[c] / 255.0, label=f"{classes[c]} ({100 * n / prediction.size:.1f}%)")
               for c, n in zip(present[order], counts[order])]
    height, width = prediction.shape
    fig = plt.figure(figsize=(max(4.0, width / dpi) + 2.5, max(3.0, height / dpi)), dpi=dpi)
    ax = fig.add_axes([0.0, 0.0, 1.0 - 2.5 / fig.get_figwidth(), 1.0])
    ax.imshow(blended)
    ax.set_axis_off()
    fig.legend(handles=handles[:20], loc="center right", fontsize=8, frameon=False,
               title="classes" if len(handles) <= 20 else f"top 20 of {len(handles)} classes")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
