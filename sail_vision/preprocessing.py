"""Image preprocessing as upstream SAIL does it, without torchvision.

Upstream resizes with torchvision's ``Resize`` on a PIL image (which is PIL's bilinear resize),
scales to [0, 1], normalises with the ImageNet mean / std and cuts the image into p x p patches,
each flattened in (channel, row, column) order.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import ImageError, InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_TOKENS = 4096

ImageInput = Union[str, Path, Image.Image, np.ndarray]


def native_resize_size(size: tuple[int, int], patch_size: int,
                       max_tokens: int = DEFAULT_MAX_TOKENS) -> tuple[int, int]:
    """Upstream's native-resolution rule: (width, height) -> (new_width, new_height).

    Both sides become multiples of ``patch_size`` with the aspect ratio kept; the image is only
    shrunk when the patch count would exceed ``max_tokens``.
    """
    width, height = (int(v) for v in size)
    if width <= 0 or height <= 0:
        raise InputError(f"image size must be positive, got {width}x{height}")
    if patch_size <= 0 or max_tokens <= 0:
        raise InputError(f"patch_size and max_tokens must be positive, got {patch_size}, {max_tokens}")
    width_is_long = height <= width
    long, short = (width, height) if width_is_long else (height, width)
    new_long = math.ceil(long / patch_size) * patch_size
    new_short = math.ceil(int(new_long * short / long) / patch_size) * patch_size
    tokens = new_long * new_short / (patch_size * patch_size)
    if tokens > max_tokens:
        scale = math.sqrt(tokens / max_tokens)
        new_long = int(new_long / scale / patch_size) * patch_size
        new_short = int(new_short / scale / patch_size) * patch_size
        if new_short == 0:
            raise InputError(
                f"image {width}x{height} is too elongated for max_tokens={max_tokens} at patch size "
                f"{patch_size}: its short side would have no patch")
    return (new_long, new_short) if width_is_long else (new_short, new_long)


def load_image(image: ImageInput) -> Image.Image:
    """Open a path, PIL image or uint8 HxWx3 / HxW array as an RGB PIL image."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (1, 3))):
            raise ImageError(
                f"array images must be uint8 HxWx3 (or HxW), got dtype {image.dtype} shape {image.shape}")
        return Image.fromarray(image.reshape(image.shape[:2]) if image.ndim == 3 and image.shape[2] == 1
                               else image).convert("RGB")
    if isinstance(image, (str, Path)):
        path = Path(image)
        try:
            with Image.open(path) as img:
                img.load()
                return img.convert("RGB")
        except FileNotFoundError:
            raise ImageError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise ImageError(f"{path}: is a directory, not an image") from None
        except UnidentifiedImageError:
            raise ImageError(f"{path}: not an image PIL can decode") from None
        except Image.DecompressionBombError as exc:
            raise ImageError(f"{path}: {exc}") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{path}: cannot decode image ({exc})") from None
    raise ImageError(f"unsupported image input of type {type(image).__name__}; "
                     f"pass a path, a PIL image or a uint8 HxWx3 array")


def normalize_image(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 (3, H, W), scaled to [0, 1] then mean / std normalised."""
    array = np.asarray(image, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).float().div(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(3, 1, 1)
    return tensor.sub(mean).div(std)


def pixels_to_patches(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(..., 3, H, W) with H, W multiples of p -> (..., nh, nw, 3, p, p), grid row-major."""
    *lead, channels, height, width = pixels.shape
    if height % patch_size or width % patch_size:
        raise InputError(f"pixel size {height}x{width} is not a multiple of the patch size {patch_size}")
    nh, nw = height // patch_size, width // patch_size
    x = pixels.reshape(*lead, channels, nh, patch_size, nw, patch_size)
    n = len(lead)
    x = x.permute(*range(n), n + 1, n + 3, n, n + 2, n + 4)
    return x.contiguous()


def parse_resolution(resolution: str | int | tuple[int, int] | None):
    """Normalise a resolution spec: None / 'native' -> None; 224 / '224' -> 224 (shorter side +
    center crop); (H, W) / 'HxW' -> (H, W) (plain resize)."""
    if resolution is None or resolution == "native":
        return None
    if isinstance(resolution, int) and not isinstance(resolution, bool):
        value = resolution
    elif isinstance(resolution, (tuple, list)) and len(resolution) == 2:
        return int(resolution[0]), int(resolution[1])
    elif isinstance(resolution, str) and "x" in resolution.lower():
        parts = resolution.lower().split("x")
        try:
            return int(parts[0]), int(parts[1])
        except (ValueError, IndexError):
            raise InputError(f"resolution {resolution!r}: expected 'native', a size like 224, or HxW") from None
    else:
        try:
            value = int(resolution)
        except (TypeError, ValueError):
            raise InputError(f"resolution {resolution!r}: expected 'native', a size like 224, or HxW") from None
    if value <= 0:
        raise InputError(f"resolution must be positive, got {value}")
    return value


def resize_image(image: Image.Image, patch_size: int, resolution=None,
                 max_tokens: int = DEFAULT_MAX_TOKENS) -> Image.Image:
    """Resize an RGB image for SAIL.

    ``resolution`` None: upstream's native rule; an int S: shorter side to S (bilinear) then a
    center crop of S x S, S a multiple of p; (H, W): plain bilinear resize to H x W.
    """
    res = parse_resolution(resolution)
    if res is None:
        size = native_resize_size(image.size, patch_size, max_tokens)
        return image.resize(size, Image.BILINEAR)
    if isinstance(res, tuple):
        height, width = res
        _check_multiple(height, patch_size, "height")
        _check_multiple(width, patch_size, "width")
        return image.resize((width, height), Image.BILINEAR)
    _check_multiple(res, patch_size, "crop size")
    width, height = image.size
    scale = res / min(width, height)
    new_w, new_h = max(res, round(width * scale)), max(res, round(height * scale))
    resized = image.resize((new_w, new_h), Image.BILINEAR)
    left, top = (new_w - res) // 2, (new_h - res) // 2
    return resized.crop((left, top, left + res, top + res))


def _check_multiple(value: int, patch_size: int, what: str) -> None:
    if value <= 0 or value % patch_size:
        raise InputError(f"{what} {value} must be a positive multiple of the patch size {patch_size}")


def image_to_patches(image: ImageInput, patch_size: int, max_tokens: int = DEFAULT_MAX_TOKENS,
                     resolution=None) -> torch.Tensor:
    """Preprocess one image into float32 patches of shape (nh, nw, 3, p, p).

    Accepts a path, a PIL image (any mode; converted to RGB) or a uint8 HxWx3 array. By default the
    upstream native-resolution rule applies; see :func:`resize_image` for ``resolution``.
    """
    rgb = load_image(image)
    resized = resize_image(rgb, patch_size, resolution, max_tokens)
    return pixels_to_patches(normalize_image(resized), patch_size)
