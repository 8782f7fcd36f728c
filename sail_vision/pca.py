"""PCA pictures of patch features: the first three principal components, fitted jointly over
all given images, mapped to RGB and drawn beside each image (as DINOv2's demos show them)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .errors import InputError

#: Each component is scaled so that these percentiles (over all patches) map to 0 and 1.
SCALE_PERCENTILES = (1.0, 99.0)


def pca_rgb(feature_maps: Sequence[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """(nh, nw, D) patch features per image -> (nh, nw, 3) float32 colours in [0, 1] per image.

    One PCA is fitted on the patches of all images together, so colours are comparable across
    images; component j becomes colour channel j after robust min-max scaling.
    """
    from sklearn.decomposition import PCA

    if not feature_maps:
        raise InputError("no feature maps to project")
    shapes = []
    for fmap in feature_maps:
        if fmap.ndim != 3:
            raise InputError(f"patch features must be (nh, nw, D) per image, got {fmap.shape}")
        shapes.append(fmap.shape[:2])
    dims = {f.shape[2] for f in feature_maps}
    if len(dims) != 1:
        raise InputError(f"all feature maps need the same width D, got {sorted(dims)}")
    stacked = np.concatenate([np.asarray(f, dtype=np.float32).reshape(-1, f.shape[2]) for f in feature_maps])
    if not np.isfinite(stacked).all():
        raise InputError("patch features contain NaN or inf; cannot fit a PCA")
    components = min(3, stacked.shape[0], stacked.shape[1])
    projected = PCA(n_components=components, random_state=seed).fit_transform(stacked)
    colours = np.zeros((stacked.shape[0], 3), dtype=np.float32)
    for j in range(components):
        low, high = np.percentile(projected[:, j], SCALE_PERCENTILES)
        span = high - low
        colours[:, j] = np.clip((projected[:, j] - low) / span, 0, 1) if span > 0 else 0.5
    out, start = [], 0
    for nh, nw in shapes:
        out.append(colours[start:start + nh * nw].reshape(nh, nw, 3))
        start += nh * nw
    return out


def render_pca_figure(images: Sequence[Image.Image], colour_maps: Sequence[np.ndarray], out_path: str | Path,
                      titles: Sequence[str] | None = None, *, suptitle: str | None = None) -> Path:
    """Save a figure with one row per image: the image, then its PCA colours over the same extent."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    if len(images) != len(colour_maps):
        raise InputError(f"{len(images)} images but {len(colour_maps)} colour maps")
    out_path = Path(out_path)
    if out_path.suffix.lower() not in (".png", ".jpg", ".jpeg", ".pdf", ".svg"):
        raise InputError(f"--out {out_path}: use a .png, .jpg, .pdf or .svg file name")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    rows = len(images)
    fig, axes = plt.subplots(rows, 2, figsize=(7, 3.2 * rows), squeeze=False)
    for i, (image, colours) in enumerate(zip(images, colour_maps)):
        width, height = image.size
        axes[i, 0].imshow(image)
        axes[i, 1].imshow(colours, interpolation="nearest", extent=(0, width, height, 0))
        nh, nw = colours.shape[:2]
        axes[i, 0].set_title(titles[i] if titles else f"image {i}", fontsize=8)
        axes[i, 1].set_title(f"PCA of {nh}x{nw} patch features", fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    if suptitle:
        fig.suptitle(suptitle, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


def maps_from_images(encoder, images: Sequence[str | Path], layer: int, *, resolution=None, max_tokens: int = 1024,
                     max_pixels: int | None = None):
    """Encode image files; return (display images as encoded, (nh, nw, D) float32 patch maps)."""
    from .preprocessing import DEFAULT_MAX_PIXELS, Preprocess, image_pixels

    pre = Preprocess.create(encoder.patch_size, resolution, max_tokens, max_pixels or DEFAULT_MAX_PIXELS)
    shown, maps = [], []
    for path in images:
        rgb = pre.rgb_image(str(path))
        patches = pre.to_patches(image_pixels(rgb))
        encoding = encoder.encode_patches(patches, [layer])
        nh, nw = patches.shape[:2]
        maps.append(encoding.patch_tokens(layer)[0].float().reshape(nh, nw, -1).cpu().numpy())
        shown.append(rgb)
    return shown, maps


def maps_from_feature_dir(features, layer: int | None = None, limit: int = 8):
    """From an extraction folder: (display images, patch maps, titles, feature name) of the first
    ``limit`` valid images. ``layer`` None picks the deepest extracted patch layer."""
    from .preprocessing import BadImageError, Preprocess, decode_image
    from .feature_store import FeatureStoreError

    patch_layers = [info["layer"] for info in features.manifest["features"].values() if info.get("pool") == "patch"]
    if not patch_layers:
        raise FeatureStoreError(f"{features.path}: has no patch features; extract with --pool patch")
    if layer is None:
        name = f"layer-{max(patch_layers)}_patch"
    else:
        try:
            name = features.name_for(layer, "patch")
        except FeatureStoreError:
            raise FeatureStoreError(f"{features.path}: no patch features of layer {layer}; patch layers here: "
                                    f"{sorted(patch_layers)}") from None
    count = min(limit, features.num_valid)
    if count == 0:
        raise FeatureStoreError(f"{features.path}: no successfully extracted images")
    prep = features.manifest.get("preprocessing") or {}
    pre = None
    if "patch_size" in prep:
        resolution = prep.get("resolution", "native")
        pre = Preprocess.create(int(prep["patch_size"]), tuple(resolution) if isinstance(resolution, list)
                                else resolution, int(prep.get("max_tokens", 4096)), prep.get("max_pixels"))
    paths = features.paths[:count] or [None] * count
    maps = [np.asarray(features.patch_maps(name, i), dtype=np.float32) for i in range(count)]
    shown = []
    for path, fmap in zip(paths, maps):
        try:
            if path is None:
                raise BadImageError("<no path>", "missing", "the folder records no image paths")
            shown.append(pre.rgb_image(path) if pre is not None else decode_image(path))
        except BadImageError:  # no path, or the image moved or changed since extraction: a grey tile
            nh, nw = fmap.shape[:2]
            shown.append(Image.new("RGB", (nw * 8, nh * 8), (128, 128, 128)))
    titles = [Path(p).name if p else f"row {i}" for i, p in enumerate(paths)]
    return shown, maps, titles, name
