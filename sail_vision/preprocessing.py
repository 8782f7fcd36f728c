"""The one image path of sail-vision: decoding any image to RGB, and upstream SAIL's preprocessing.

Everything that reads an image (``SailEncoder.encode``, ``extract``, ``pca``, ``segment``, the
mmseg inference helpers) goes through :func:`decode_image` and :class:`Preprocess`, so one file
gives the same pixels, and the same features, whichever way it comes in. Segmentation label maps
go through :func:`decode_mask`.

Upstream resizes with torchvision's ``Resize`` on a PIL image (which is PIL's bilinear resize),
scales to [0, 1], normalises with the ImageNet mean / std and cuts the image into p x p patches,
each flattened in (channel, row, column) order.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from .errors import ImageError, InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_MAX_TOKENS = 4096
#: PIL's own default decompression-bomb limit (pixels).
DEFAULT_MAX_PIXELS = 89_478_485
#: The mask label of pixels that count for nothing (mmseg's ``ignore_index``).
IGNORE_INDEX = 255
#: What transparent pixels are composited over (white, as browsers show transparent images).
ALPHA_BACKGROUND = (255, 255, 255)

ImageInput = Union[str, Path, bytes, Image.Image, np.ndarray]


class BadImageError(ImageError):
    """One input image cannot be used; ``kind`` names the reason class (for failure reports)."""

    def __init__(self, path, kind: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path = str(path)
        self.kind = kind
        self.detail = detail


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


@contextlib.contextmanager
def _own_bomb_check():
    """Disable PIL's global decompression-bomb check (:func:`decode_image` applies its own limit)
    and make sure truncated files raise even if someone set ``LOAD_TRUNCATED_IMAGES``."""
    saved = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
    Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = None, False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _describe(image) -> str:
    """How an input is named in error messages: its path, or its kind."""
    if isinstance(image, (str, Path)):
        return str(image)
    return "<bytes>" if isinstance(image, (bytes, bytearray, memoryview)) else "<image>"


def _open_checked(image: str | Path | bytes, max_pixels: int | None, name: str) -> Image.Image:
    """Open (lazily) a file path or encoded bytes, checking size and the pixel limit first."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        if len(image) == 0:
            raise BadImageError(name, "empty", "zero-byte image data")
        stream = io.BytesIO(bytes(image))
    else:
        path = os.fspath(image)
        try:
            info = os.stat(path)
        except FileNotFoundError:
            raise BadImageError(name, "missing", "no such file") from None
        except OSError as exc:
            raise BadImageError(name, "unreadable", f"cannot read ({exc.strerror})") from None
        if stat.S_ISDIR(info.st_mode):
            raise BadImageError(name, "not-image", "is a directory, not an image")
        if not stat.S_ISREG(info.st_mode):  # a FIFO would block forever, a device is no image
            raise BadImageError(name, "not-image", "not a regular file (a FIFO, socket or device)")
        size = info.st_size
        if size == 0:
            raise BadImageError(name, "empty", "zero-byte file")
        stream = path
    try:
        opened = Image.open(stream)
    except UnidentifiedImageError:
        raise BadImageError(name, "not-image", "not an image file PIL can identify") from None
    except PermissionError as exc:
        raise BadImageError(name, "unreadable", f"cannot read ({exc.strerror})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(name, "corrupt", f"cannot open image ({exc})") from None
    width, height = opened.size
    if width <= 0 or height <= 0:
        opened.close()
        raise BadImageError(name, "corrupt", f"image header says {width}x{height}")
    if max_pixels is not None and width * height > max_pixels:
        opened.close()
        raise BadImageError(name, "too-large", f"{width}x{height} = {width * height} pixels is over the "
                                               f"decompression-bomb limit of {max_pixels} (--max-pixels)")
    return opened


def image_size(image: str | Path | bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               name: str | None = None) -> tuple[int, int]:
    """(width, height) from the header of a file or encoded bytes, with :func:`decode_image`'s checks."""
    with _own_bomb_check():
        opened = _open_checked(image, max_pixels, name or _describe(image))
        with opened:
            return opened.size


#: Modes whose RGB meaning PIL's conversion gives exactly (after compositing any transparency).
_CONVERTIBLE_MODES = ("RGB", "RGBX", "RGBA", "RGBa", "L", "LA", "La", "1", "P", "PA", "CMYK", "YCbCr")
#: Unsigned 16-bit grayscale modes.
_UINT16_MODES = ("I;16", "I;16L", "I;16B", "I;16N")
#: Formats whose 32-bit mode "I" only ever holds 16-bit samples (0..65535): 16-bit PGM/PPM/PNM
#: (PIL scales any maxval to 0..65535) and 16-bit grayscale PNG (older PIL opens it as "I").
_UINT16_IN_I_FORMATS = ("PNG", "PPM")

#: How :func:`decode_image` turns a file into RGB pixels. Recorded with the features (it is part of
#: ``Preprocess.describe()``); bump ``version`` whenever a rule changes the pixels of some file.
DECODING_RULES = {
    "version": 2,
    "decoder": "Pillow",
    "rgb": "kept as is; ICC profiles ignored (as upstream)",
    "grayscale": "L replicated to three channels; 1-bit as 0 / 255",
    "16-bit": "unsigned 16-bit samples (I;16* grayscale, 16-bit RGB / RGBA / LA PNG and TIFF, 16-bit "
              "PGM / PPM) keep their high byte (v >> 8), PIL's rule for 16-bit colour, so a 16-bit gray image "
              "and the same image as 16-bit RGB give the same pixels",
    "32-bit integer": "refused (unsupported-mode): mode I from TIFF or memory declares no white level; "
                      "only PNG / PGM 16-bit data that PIL opens as mode I is accepted (as 16-bit)",
    "floating point": "refused (unsupported-mode)",
    "alpha": f"composited over RGB {list(ALPHA_BACKGROUND)}: RGBA, LA, PA, premultiplied alpha, palette "
             f"transparency and single-colour (tRNS) transparency",
    "palette": "PIL's conversion (palette colours, not indices)",
    "cmyk": "PIL's conversion (no colour management)",
    "ycbcr": "PIL's conversion",
    "other modes": "refused (unsupported-mode): LAB, HSV, signed 16-bit and any mode not listed",
    "exif_orientation": "ignored (as upstream): pixels are used as stored",
    "multi_frame": "first frame only (animated GIF / PNG / WebP, multi-page TIFF)",
    "arrays": "uint8 HxW, HxWx1, HxWx3 or HxWx4 (RGBA, composited); any other dtype or shape refused",
}


def decoding_rules() -> dict:
    """A copy of :data:`DECODING_RULES`, for manifests."""
    return dict(DECODING_RULES)


def _composite_on_background(image: Image.Image) -> Image.Image:
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, ALPHA_BACKGROUND + (255,))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _holds_uint16(image: Image.Image) -> bool:
    return image.mode in _UINT16_MODES or (image.mode == "I" and image.format in _UINT16_IN_I_FORMATS)


def _uint16_values(image: Image.Image, name: str, kind: str) -> np.ndarray:
    """The samples of a 16-bit (or 16-bit-in-I) image as int64, checked to lie in 0..65535."""
    values = np.asarray(image).astype(np.int64)
    if values.size and (values.min() < 0 or values.max() > 65535):
        raise BadImageError(name, kind, f"mode {image.mode} image with values outside 0..65535")
    return values


def _uint16_to_8bit(image: Image.Image, path: str) -> Image.Image:
    """A 16-bit grayscale image as 8-bit L (high byte), or LA when a tRNS value marks transparency."""
    values = _uint16_values(image, path, "unsupported-mode")
    gray = Image.fromarray((values >> 8).astype(np.uint8), mode="L")
    key = image.info.get("transparency")
    if isinstance(key, int):
        alpha = Image.fromarray(np.where(values == key, 0, 255).astype(np.uint8), mode="L")
        return Image.merge("LA", (gray, alpha))
    return gray


def _refuse_mode(image: Image.Image, path: str) -> BadImageError:
    mode = image.mode
    if mode == "I" or mode.startswith("I;"):
        origin = f"a {image.format} file" if image.format else "an in-memory image"
        detail = (f"{mode!r} integer image ({origin}) declares no white level (is it 0..255, 0..4095, "
                  f"0..65535?); convert it to 8- or 16-bit unsigned first")
    elif mode == "F":
        detail = "floating-point image has no defined 0..255 meaning; convert it to 8-bit RGB first"
    else:
        detail = f"image mode {mode!r} has no well-defined RGB meaning here; convert it to 8-bit RGB first"
    return BadImageError(path, "unsupported-mode", detail)


def to_rgb(image: Image.Image, path: str = "<image>") -> Image.Image:
    """An 8-bit RGB image whose pixels mean what the file's pixels mean (see :data:`DECODING_RULES`)."""
    if _holds_uint16(image):
        image = _uint16_to_8bit(image, path)
    elif image.mode not in _CONVERTIBLE_MODES:
        raise _refuse_mode(image, path)
    if image.has_transparency_data:
        return _composite_on_background(image)
    return image if image.mode == "RGB" else image.convert("RGB")


def _array_to_image(array: np.ndarray, name: str) -> Image.Image:
    if array.dtype != np.uint8 or array.size == 0 or not (
            array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise BadImageError(name, "unsupported-mode",
                            f"array images must be non-empty uint8 HxW, HxWx1, HxWx3 or HxWx4, got dtype "
                            f"{array.dtype} shape {array.shape} (scale other dtypes to 0..255 uint8 yourself)")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(array))


def _load_first_frame(opened: Image.Image, name: str, kind_prefix: str = "") -> None:
    """Decode the (first) frame of an opened image, mapping decoder failures to BadImageError."""
    try:
        opened.load()
    except OSError as exc:
        text = str(exc)
        kind = "truncated" if "truncated" in text else "corrupt"
        raise BadImageError(name, kind_prefix + kind, f"cannot decode image ({text})") from None
    except (SyntaxError, ValueError, EOFError) as exc:
        raise BadImageError(name, kind_prefix + "corrupt", f"cannot decode image ({exc})") from None


def decode_image(image: ImageInput, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 name: str | None = None) -> Image.Image:
    """The one image decoder: a path, encoded bytes, a PIL image or an array -> 8-bit RGB PIL image.

    Pixels keep their meaning (:data:`DECODING_RULES`: alpha over white, 16-bit reduced to the high
    byte, CMYK / palette / grayscale converted, first frame of animations, EXIF orientation
    ignored). Raises :class:`BadImageError` (kinds: missing, unreadable, empty, not-image,
    too-large, truncated, corrupt, unsupported-mode) instead of returning doubtful pixels;
    ``name`` is what error messages call the image.
    """
    return decode_sized(image, max_pixels, name)[0]


def decode_sized(image: ImageInput, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str | None = None, *,
                 draft_size: Callable[[tuple[int, int]], tuple[int, int]] | None = None
                 ) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`decode_image` plus the image's full (width, height).

    ``draft_size`` (opt-in, JPEG files only): a function of the full size giving the size the image
    will be resized to; when both sides are at least twice that size, the JPEG decoder scales by 1/2,
    1/4 or 1/8 in the DCT (Pillow's ``Image.draft``) while staying at least that size, so the returned
    image may be smaller than the full size (faster decoding, slightly different pixels after the
    resize); otherwise nothing changes.
    """
    name = name or _describe(image)
    if isinstance(image, Image.Image):
        return to_rgb(image, name), image.size
    if isinstance(image, np.ndarray):
        rgb = to_rgb(_array_to_image(image, name), name)
        return rgb, rgb.size
    if not isinstance(image, (str, Path, bytes, bytearray, memoryview)):
        raise BadImageError(name, "not-image", f"unsupported image input of type {type(image).__name__}; pass a "
                                               f"path, encoded bytes, a PIL image or a uint8 HxWx3 array")
    with _own_bomb_check():
        opened = _open_checked(image, max_pixels, name)
        kept = False
        try:
            size = opened.size
            if draft_size is not None and opened.format == "JPEG":
                target = tuple(draft_size(size))
                if min(size[0] // target[0], size[1] // target[1]) >= 2:  # else no DCT scale applies: exact path
                    opened.draft(None, target)
            _load_first_frame(opened, name)
            rgb = to_rgb(opened, name)
            if rgb is not opened:
                return rgb, size
            # Decoded, and Pillow already closed its file (single-frame formats): the image is returned as
            # it is, without a copy of its pixels. Else (a frame of a multi-frame file) a copy, then close.
            kept = opened.fp is None and getattr(opened, "_fp", None) is None
            return (opened if kept else opened.copy()), size
        finally:
            if not kept:
                opened.close()


# ---------------------------------------------------------------------------------- masks
#: Mask file formats that change pixel values when saving; a label map stored in them is refused.
_LOSSY_FORMATS = ("JPEG", "MPO", "JPEG2000")


def _mask_values(image: Image.Image, name: str) -> np.ndarray:
    """The label values of a decoded mask: uint8 for L / P / 1-bit / gray-equal RGB, uint16 for 16-bit."""
    mode = image.mode
    if mode in ("L", "P"):
        return np.asarray(image, dtype=np.uint8)  # palette masks: the indices, not the colours
    if mode == "1":
        return np.asarray(image).astype(np.uint8)  # 0 / 1, not 0 / 255
    if mode in _UINT16_MODES or mode == "I":
        return _uint16_values(image, name, "mask-unsupported-mode").astype(np.uint16)
    if mode == "RGB":
        rgb = np.asarray(image)
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()):
            raise BadImageError(name, "mask-colour", "RGB mask whose channels differ: colour-coded masks have no "
                                                     "label values; save label indices as a mode L or P PNG")
        return np.ascontiguousarray(rgb[..., 0])
    raise BadImageError(name, "mask-unsupported-mode", f"mask mode {mode!r}: label maps must be L, P, 1-bit, "
                                                       f"16-bit grayscale or gray-equal RGB")


def apply_reduce_zero_label(labels: np.ndarray, name: str = "<mask>") -> np.ndarray:
    """mmseg's ``reduce_zero_label``: 0 ("other") -> 255 (ignored), 1..254 -> 0..253, 255 stays 255."""
    if labels.size and int(labels.max()) > 255:
        raise BadImageError(name, "mask-label",
                            f"reduce_zero_label needs labels <= 255, found {int(labels.max())}")
    reduced = labels.astype(np.int64) - 1
    reduced[(labels == 0) | (labels == IGNORE_INDEX)] = IGNORE_INDEX
    return reduced.astype(np.uint8)


def _check_mask_labels(labels: np.ndarray, num_classes: int, name: str) -> None:
    bad = (labels >= num_classes) & (labels != IGNORE_INDEX)
    if bad.any():
        raise BadImageError(name, "mask-label", f"label {int(labels[bad].max())} is not a class of {num_classes} "
                                                f"(0..{num_classes - 1}) nor the ignore index {IGNORE_INDEX}")


def decode_mask(mask: str | Path | bytes | np.ndarray, *, reduce_zero_label: bool = False,
                num_classes: int | None = None, expected_size: tuple[int, int] | None = None,
                max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str | None = None) -> np.ndarray:
    """The one segmentation-mask decoder: a label-map file, bytes or array -> (H, W) uint8 / uint16 labels.

    Accepts mode L, P (palette indices are the labels), 1-bit (0 / 1), 16-bit grayscale, and RGB
    whose three channels are equal; refuses colour-coded RGB, alpha and lossy (JPEG) masks.
    ``reduce_zero_label`` applies :func:`apply_reduce_zero_label` (ADE20K); ``num_classes`` checks every
    label is a class or :data:`IGNORE_INDEX`; ``expected_size`` is the image's (width, height).
    Raises :class:`BadImageError` whose kinds start with ``mask-``.
    """
    name = name or _describe(mask)
    if isinstance(mask, np.ndarray):
        if mask.ndim != 2 or mask.dtype not in (np.uint8, np.uint16):
            raise BadImageError(name, "mask-unsupported-mode", f"mask arrays must be uint8 or uint16 HxW, got "
                                                               f"dtype {mask.dtype} shape {mask.shape}")
        labels = mask
    else:
        labels = _read_mask_file(mask, max_pixels, name)
    if expected_size is not None and (labels.shape[1], labels.shape[0]) != tuple(expected_size):
        raise BadImageError(name, "mask-size", f"mask is {labels.shape[1]}x{labels.shape[0]} but its image is "
                                               f"{expected_size[0]}x{expected_size[1]}")
    if reduce_zero_label:
        labels = apply_reduce_zero_label(labels, name)
    if num_classes is not None:
        _check_mask_labels(labels, num_classes, name)
    return labels


def _read_mask_file(mask: str | Path | bytes, max_pixels: int | None, name: str) -> np.ndarray:
    def check(opened: Image.Image) -> None:
        if opened.format in _LOSSY_FORMATS:
            raise BadImageError(name, "mask-lossy", f"{opened.format} mask: lossy compression changes label "
                                                    f"values; store masks as PNG")

    return _read_target_image(mask, max_pixels, name, "mask-", check, lambda image: _mask_values(image, name))


def _read_target_image(file: str | Path | bytes, max_pixels: int | None, name: str, prefix: str,
                       check: Callable[[Image.Image], None], values: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    """Open a label-map or depth-map image (its errors' kinds prefixed ``prefix``), let ``check`` refuse
    its format or mode, decode its first frame and return ``values(image)``."""
    with _own_bomb_check():
        try:
            opened = _open_checked(file, max_pixels, name)
        except BadImageError as exc:
            raise BadImageError(name, prefix + exc.kind, exc.detail) from None
        with opened:
            check(opened)
            _load_first_frame(opened, name, prefix)
            return values(opened)


# ---------------------------------------------------------------------------------- depth maps
#: 16-bit PNG depth values per metre unless told otherwise: millimetres, as NYU Depth v2 (mmseg's NYU
#: configs load them with ``depth_rescale_factor=1e-3``).
DEFAULT_DEPTH_SCALE = 1000.0
#: The stored depth of a pixel without a measurement (a hole in the sensor's map).
NO_DEPTH = 0.0


def decode_depth(depth: str | Path | bytes | np.ndarray, *, scale: float = DEFAULT_DEPTH_SCALE,
                 expected_size: tuple[int, int] | None = None, max_pixels: int | None = DEFAULT_MAX_PIXELS,
                 name: str | None = None) -> np.ndarray:
    """The one depth-map decoder: a depth file or array -> (H, W) float32 metres, 0 = no measurement.

    A 16-bit grayscale image (PNG) holds ``scale`` values per metre (default 1000: millimetres), 0
    meaning no measurement; it becomes ``values.astype(float32) * (1 / scale)``, the arithmetic of
    mmseg's ``LoadDepthAnnotation``. A ``.npy`` file (or an array) holds float metres; NaN means
    no measurement (stored 0). 8-bit images, negative or infinite depths are refused.
    ``expected_size`` is the image's (width, height). Raises :class:`BadImageError` (``depth-*``).
    """
    name = name or _describe(depth)
    if isinstance(depth, np.ndarray):
        metres = _depth_metres(depth, name)
    elif isinstance(depth, (str, Path)) and str(depth).lower().endswith(".npy"):
        metres = _depth_metres(_read_depth_npy(depth, max_pixels, name), name)
    else:
        metres = _read_depth_image(depth, max_pixels, name).astype(np.float32) * (1.0 / float(scale))
    if expected_size is not None and (metres.shape[1], metres.shape[0]) != tuple(expected_size):
        raise BadImageError(name, "depth-size", f"depth map is {metres.shape[1]}x{metres.shape[0]} but its image is "
                                                f"{expected_size[0]}x{expected_size[1]}")
    return metres


def _depth_metres(array: np.ndarray, name: str) -> np.ndarray:
    if array.ndim != 2 or array.dtype.kind != "f":
        raise BadImageError(name, "depth-unsupported-mode", f"depth arrays must be float HxW metres, got dtype "
                                                            f"{array.dtype} shape {array.shape}")
    metres = np.array(array, dtype=np.float32)
    metres[np.isnan(metres)] = NO_DEPTH
    if np.isinf(metres).any() or (metres < 0).any():
        raise BadImageError(name, "depth-value", "depth map holds negative or infinite depths; use metres >= 0 "
                                                 "(0 or NaN = no measurement)")
    return metres


def _read_depth_npy(path: str | Path, max_pixels: int | None, name: str) -> np.ndarray:
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise BadImageError(name, "depth-missing", "no such depth file") from None
    except (OSError, ValueError) as exc:
        raise BadImageError(name, "depth-unreadable", f"not a readable .npy array ({exc})") from None
    if max_pixels is not None and array.size > max_pixels:
        raise BadImageError(name, "depth-too-large", f"{array.size} values exceed --max-pixels {max_pixels}")
    return np.asarray(array)


def _read_depth_image(depth: str | Path | bytes, max_pixels: int | None, name: str) -> np.ndarray:
    def check(opened: Image.Image) -> None:
        if opened.format in _LOSSY_FORMATS or not (opened.mode in _UINT16_MODES or opened.mode == "I"):
            raise BadImageError(name, "depth-unsupported-mode",
                                f"{opened.format} mode {opened.mode} depth map: depth PNGs must be 16-bit "
                                f"grayscale (or pass float metres as .npy)")

    return _read_target_image(depth, max_pixels, name, "depth-", check,
                              lambda image: _uint16_values(image, name, "depth-unsupported-mode"))


def resize_depth(metres: np.ndarray, patch_size: int, resolution=None, max_tokens: int = DEFAULT_MAX_TOKENS) -> np.ndarray:
    """(H0, W0) float32 metres -> (H, W) on the pixels :func:`resize_image` gives the image of that size:
    the same geometry, nearest-neighbour (no depth is ever mixed with a hole's 0)."""
    image = Image.fromarray(np.ascontiguousarray(metres, dtype=np.float32), mode="F")
    geometry = resize_geometry(image.size, patch_size, resolution, max_tokens)
    return np.asarray(_apply_geometry(image, geometry, Image.NEAREST), dtype=np.float32).copy()


def image_pixels(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> its uint8 pixels (H, W, 3), the compact form workers hand over."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy())


def normalize_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (..., H, W, 3) -> float32 (..., 3, H, W) scaled to [0, 1] then mean / std
    normalised, on the pixels' device (the same float32 operations, so the same bits, everywhere)."""
    x = pixels.movedim(-1, -3).float().div(255.0)
    mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=pixels.device).view(3, 1, 1)
    return x.sub(mean).div(std)


def normalize_image(image: Image.Image) -> torch.Tensor:
    """RGB PIL image -> float32 (3, H, W), scaled to [0, 1] then mean / std normalised."""
    return normalize_pixels(image_pixels(image))


def pixels_uint8_to_patches(pixels: torch.Tensor, patch_size: int) -> torch.Tensor:
    """uint8 pixels (..., H, W, 3) -> normalised float32 patches (..., nh, nw, 3, p, p), computed on the
    pixels' device (extraction uploads uint8, a quarter of float32's bytes, and patches on the GPU)."""
    return pixels_to_patches(normalize_pixels(pixels), patch_size)


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


def resize_geometry(size: tuple[int, int], patch_size: int, resolution=None,
                    max_tokens: int = DEFAULT_MAX_TOKENS) -> tuple[tuple[int, int], tuple[int, int, int, int] | None]:
    """Where an image of (width, height) goes: ((resized width, height), crop box or None).

    The one geometry of :func:`resize_image` (images, bilinear) and :func:`resize_mask` (label
    maps, nearest), so a mask always lands on exactly the pixels of its image.
    """
    res = parse_resolution(resolution)
    if res is None:
        return native_resize_size(size, patch_size, max_tokens), None
    if isinstance(res, tuple):
        height, width = res
        _check_multiple(height, patch_size, "height")
        _check_multiple(width, patch_size, "width")
        return (width, height), None
    _check_multiple(res, patch_size, "crop size")
    width, height = size
    scale = res / min(width, height)
    new_w, new_h = max(res, round(width * scale)), max(res, round(height * scale))
    left, top = (new_w - res) // 2, (new_h - res) // 2
    return (new_w, new_h), (left, top, left + res, top + res)


def _apply_geometry(image: Image.Image, geometry, resample) -> Image.Image:
    size, box = geometry
    resized = image.resize(size, resample)
    return resized if box is None else resized.crop(box)


def resize_image(image: Image.Image, patch_size: int, resolution=None,
                 max_tokens: int = DEFAULT_MAX_TOKENS, source_size: tuple[int, int] | None = None) -> Image.Image:
    """Resize an RGB image for SAIL.

    ``resolution`` None: upstream's native rule; an int S: shorter side to S (bilinear) then a
    center crop of S x S, S a multiple of p; (H, W): plain bilinear resize to H x W.
    ``source_size``: the (width, height) the geometry is computed from when ``image`` is a reduced
    (JPEG draft) decode of a larger file; default ``image.size``.
    """
    geometry = resize_geometry(source_size or image.size, patch_size, resolution, max_tokens)
    return _apply_geometry(image, geometry, Image.BILINEAR)


def resize_mask(labels: np.ndarray, patch_size: int, resolution=None, max_tokens: int = DEFAULT_MAX_TOKENS,
                name: str = "<mask>") -> np.ndarray:
    """(H0, W0) labels -> (H, W) uint8 labels on the pixels :func:`resize_image` gives the image of
    that size: the same geometry, nearest-neighbour (labels are never mixed)."""
    if labels.size and int(labels.max()) > 255:
        raise BadImageError(name, "mask-label", f"label {int(labels.max())} does not fit the stored uint8 labels "
                                                f"(0..254, {IGNORE_INDEX} = ignored)")
    image = Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="L")
    geometry = resize_geometry(image.size, patch_size, resolution, max_tokens)
    return np.asarray(_apply_geometry(image, geometry, Image.NEAREST), dtype=np.uint8).copy()


#: mmseg's ADE20K training augmentation (``configs/_base_/datasets/ade20k_512x512.py``) as
#: :func:`augment_pair` applies it; recorded in manifests of extractions with ``--views``.
VIEW_PIPELINE = {
    "version": 1,
    "follows": "mmseg 1.x ADE20K train_pipeline: RandomResize, RandomCrop, RandomFlip, then the data "
               "preprocessor's padding",
    "random_resize": {"scale": [2048, 512], "ratio_range": [0.5, 2.0], "keep_ratio": True,
                      "image": "bilinear (PIL)", "mask": "nearest"},
    "random_crop": {"crop_size": "--resolution (height, width)", "cat_max_ratio": 0.75, "retries": 10,
                    "ignore_index": IGNORE_INDEX},
    "random_flip": {"prob": 0.5, "direction": "horizontal"},
    "pad": {"where": "bottom / right, to the crop size", "image": "the ImageNet mean colour (mmseg pads the "
            "normalised image with 0)", "mask": IGNORE_INDEX},
    "photometric_distortion": "not applied (colour jitter is left to the probe)",
    "rng": "numpy default_rng([seed, image row, view index]); draws: ratio, crop offsets (y, x) per try, flip",
}
#: The pixel value padding gets: the ImageNet mean, i.e. 0 after normalisation (mmseg's pad_val).
VIEW_PAD_COLOUR = tuple(int(round(m * 255)) for m in IMAGENET_MEAN)


def view_rng(seed: int, image_row: int, view: int) -> np.random.Generator:
    """The generator of one view: a function of (seed, image row, view index) only, so any split into
    parts, resume or rank draws the same view."""
    return np.random.default_rng([int(seed), int(image_row), int(view)])


def augment_pair(image: Image.Image, labels: np.ndarray, rng: np.random.Generator, crop_size: tuple[int, int], *,
                 scale: tuple[int, int] = (2048, 512), ratio_range: tuple[float, float] = (0.5, 2.0),
                 cat_max_ratio: float = 0.75, crop_tries: int = 10, flip_prob: float = 0.5,
                 ignore_index: int = IGNORE_INDEX) -> tuple[Image.Image, np.ndarray]:
    """One augmented view of an RGB image and its (H0, W0) uint8 label map (or float32 depth map), with one
    geometry for both.

    mmseg's ADE20K training pipeline (:data:`VIEW_PIPELINE`): RandomResize (a ratio r uniform in
    ``ratio_range``, the image rescaled, aspect kept, as large as fits ``scale * r``: bilinear for
    the image, nearest for the labels); RandomCrop of ``crop_size`` (height, width) at a uniform
    offset, redrawn up to ``crop_tries`` times until the crop holds more than one category and
    none covers ``cat_max_ratio`` or more of its labelled pixels (``ignore_index`` not counted;
    after the last try the next draw is kept, as mmseg does); RandomFlip (horizontal, both, with
    ``flip_prob``); then padding at the bottom / right up to the crop size (image: the ImageNet mean
    colour, mmseg's 0 after normalising; labels: ``ignore_index``). Photometric distortion is not
    applied. A float32 depth map takes the same geometry (nearest) with no category check and pads
    with :data:`NO_DEPTH`. Returns (RGB image of ``crop_size``, (height, width) labels or depths).
    """
    labels = np.asarray(labels)
    width, height = image.size
    if labels.shape != (height, width):
        raise InputError(f"label map {labels.shape} does not match the image's {height}x{width}")
    crop_h, crop_w = (int(v) for v in crop_size)
    low, high = ratio_range
    ratio = low + rng.random() * (high - low)
    target = (int(scale[0] * ratio), int(scale[1] * ratio))
    factor = min(max(target) / max(width, height), min(target) / min(width, height))
    size = (max(1, int(width * factor + 0.5)), max(1, int(height * factor + 0.5)))
    resized = np.asarray(image.resize(size, Image.BILINEAR))
    depth = labels.dtype == np.float32
    target = (Image.fromarray(np.ascontiguousarray(labels), mode="F") if depth
              else Image.fromarray(np.ascontiguousarray(labels, dtype=np.uint8), mode="L"))
    mask = np.asarray(target.resize(size, Image.NEAREST))

    def draw() -> tuple[int, int]:
        top = int(rng.integers(0, max(size[1] - crop_h, 0) + 1))
        left = int(rng.integers(0, max(size[0] - crop_w, 0) + 1))
        return top, left

    top, left = draw()
    if cat_max_ratio < 1 and not depth:
        for _ in range(crop_tries):
            values, counts = np.unique(mask[top:top + crop_h, left:left + crop_w], return_counts=True)
            counts = counts[values != ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            top, left = draw()
    pixels = resized[top:top + crop_h, left:left + crop_w]
    mask = mask[top:top + crop_h, left:left + crop_w]
    if rng.random() < flip_prob:
        pixels, mask = pixels[:, ::-1], mask[:, ::-1]
    out_pixels = np.empty((crop_h, crop_w, 3), np.uint8)
    out_pixels[:] = VIEW_PAD_COLOUR
    out_mask = (np.full((crop_h, crop_w), NO_DEPTH, np.float32) if depth
                else np.full((crop_h, crop_w), ignore_index, np.uint8))
    out_pixels[:pixels.shape[0], :pixels.shape[1]] = pixels
    out_mask[:mask.shape[0], :mask.shape[1]] = mask
    return Image.fromarray(out_pixels, mode="RGB"), out_mask


def _check_multiple(value: int, patch_size: int, what: str) -> None:
    if value <= 0 or value % patch_size:
        raise InputError(f"{what} {value} must be a positive multiple of the patch size {patch_size}")


@dataclass(frozen=True)
class Preprocess:
    """How one image file becomes (nh, nw, 3, p, p) patches (see ``preprocessing.resize_image``)."""

    patch_size: int
    resolution: int | tuple[int, int] | None = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    #: Opt-in JPEG draft decoding (DCT scaling before the bilinear resize, see :func:`decode_sized`):
    #: faster, not bit-identical to the exact path. Augmented views always decode exactly.
    jpeg_draft: bool = False

    @classmethod
    def create(cls, patch_size: int, resolution=None, max_tokens: int = DEFAULT_MAX_TOKENS,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, jpeg_draft: bool = False) -> "Preprocess":
        """Validate the options once (bad sizes raise InputError before any work starts)."""
        if max_tokens <= 0:
            raise InputError(f"--max-tokens must be positive, got {max_tokens}")
        if max_pixels is not None and max_pixels <= 0:
            raise InputError(f"--max-pixels must be positive, got {max_pixels}")
        pre = cls(patch_size, parse_resolution(resolution), max_tokens, max_pixels, bool(jpeg_draft))
        if pre.resolution is not None:
            resize_image(Image.new("RGB", (patch_size, patch_size)), patch_size, pre.resolution, max_tokens)
        return pre

    @property
    def fixed_grid(self) -> tuple[int, int] | None:
        """The grid every image gets at a fixed resolution; None at native resolution."""
        if self.resolution is None:
            return None
        if isinstance(self.resolution, tuple):
            return self.resolution[0] // self.patch_size, self.resolution[1] // self.patch_size
        return self.resolution // self.patch_size, self.resolution // self.patch_size

    def grid_for_size(self, size: tuple[int, int], path: str = "<image>") -> tuple[int, int]:
        """(nh, nw) for an image of (width, height)."""
        fixed = self.fixed_grid
        if fixed is not None:
            return fixed
        try:
            width, height = native_resize_size(size, self.patch_size, self.max_tokens)
        except InputError as exc:
            raise BadImageError(path, "bad-size", str(exc)) from None
        return height // self.patch_size, width // self.patch_size

    def grid_of_file(self, image: str | Path | bytes, name: str | None = None) -> tuple[int, int]:
        """(nh, nw) from the file header alone (raises BadImageError like decoding would)."""
        name = name or _describe(image)
        return self.grid_for_size(image_size(image, self.max_pixels, name), name)

    def rgb_image(self, image: ImageInput, name: str | None = None) -> Image.Image:
        """The decoded, resized 8-bit RGB image the patches are cut from."""
        rgb, size = self._decoded_sized(image, name, self.jpeg_draft)
        return resize_image(rgb, self.patch_size, self.resolution, self.max_tokens, source_size=size)

    def _decoded(self, image: ImageInput, name: str | None) -> Image.Image:
        return self._decoded_sized(image, name, False)[0]

    def _decoded_sized(self, image: ImageInput, name: str | None, draft: bool) -> tuple[Image.Image, tuple[int, int]]:
        """(decoded image, its full size); with ``draft`` a JPEG may come back reduced (never below the
        size it is resized to)."""
        name = name or _describe(image)
        target = None
        if draft:
            def target(size):
                return resize_geometry(size, self.patch_size, self.resolution, self.max_tokens)[0]
        rgb, size = decode_sized(image, self.max_pixels, name, draft_size=target)
        self.grid_for_size(size, name)  # elongated images fail the same way as when planning
        return rgb, size

    def pixels(self, image: ImageInput, name: str | None = None) -> torch.Tensor:
        """(H, W, 3) uint8 pixels of the resized image; :meth:`to_patches` turns them into patches."""
        return image_pixels(self.rgb_image(image, name))

    def mask(self, mask: str | Path | bytes | np.ndarray, image_size: tuple[int, int], *,
             reduce_zero_label: bool = False, num_classes: int | None = None, depth_scale: float | None = None,
             name: str | None = None) -> np.ndarray:
        """The (H, W) uint8 label map of an image of ``image_size`` (width, height, as decoded), on the
        preprocessed pixels (H, W = nh*p, nw*p): :func:`decode_mask` (its size must equal the image's),
        then the image's resize and crop with nearest-neighbour. Raises BadImageError (``mask-*``).
        With ``depth_scale`` the target is a depth map instead: :func:`decode_depth` (float32 metres,
        ``depth-*`` errors) and :func:`resize_depth`, the same geometry."""
        name = name or _describe(mask)
        if depth_scale is not None:
            metres = decode_depth(mask, scale=depth_scale, expected_size=image_size, max_pixels=self.max_pixels,
                                  name=name)
            return resize_depth(metres, self.patch_size, self.resolution, self.max_tokens)
        labels = decode_mask(mask, reduce_zero_label=reduce_zero_label, num_classes=num_classes,
                             expected_size=image_size, max_pixels=self.max_pixels, name=name)
        return resize_mask(labels, self.patch_size, self.resolution, self.max_tokens, name)

    def pixels_and_mask(self, image: ImageInput, mask, name: str | None = None, *, mask_name: str | None = None,
                        reduce_zero_label: bool = False, num_classes: int | None = None,
                        depth_scale: float | None = None) -> tuple[torch.Tensor, np.ndarray | None]:
        """(:meth:`pixels`, :meth:`mask`) of one image and its label map or depth map (None when ``mask``
        is None), the image decoded once and both resized by the same geometry."""
        rgb, size = self._decoded_sized(image, name, self.jpeg_draft)
        pixels = image_pixels(resize_image(rgb, self.patch_size, self.resolution, self.max_tokens, source_size=size))
        if mask is None:
            return pixels, None
        return pixels, self.mask(mask, size, reduce_zero_label=reduce_zero_label, num_classes=num_classes,
                                 depth_scale=depth_scale, name=mask_name)

    def view_pixels_and_mask(self, image: ImageInput, mask, rng: np.random.Generator, name: str | None = None, *,
                             mask_name: str | None = None, reduce_zero_label: bool = False,
                             num_classes: int | None = None,
                             depth_scale: float | None = None) -> tuple[torch.Tensor, np.ndarray]:
        """One augmented view (:func:`augment_pair`, crop size = the fixed resolution) of an image and its
        label map (or, with ``depth_scale``, depth map), drawn from ``rng`` (see :func:`view_rng`):
        ((H, W, 3) uint8 pixels, (H, W) uint8 labels or float32 metres)."""
        crop = self.view_crop_size
        if crop is None:
            raise InputError("augmented views need a fixed --resolution (the crop size of each view)")
        rgb = self._decoded(image, name)
        if depth_scale is not None:
            metres = decode_depth(mask, scale=depth_scale, expected_size=rgb.size, max_pixels=self.max_pixels,
                                  name=mask_name or _describe(mask))
            view, view_depth = augment_pair(rgb, metres, rng, crop)
            return image_pixels(view), view_depth
        labels = decode_mask(mask, reduce_zero_label=reduce_zero_label, num_classes=num_classes,
                             expected_size=rgb.size, max_pixels=self.max_pixels, name=mask_name or _describe(mask))
        if labels.size and int(labels.max()) > 255:
            raise BadImageError(mask_name or _describe(mask), "mask-label",
                                f"label {int(labels.max())} does not fit the stored uint8 labels")
        view, view_labels = augment_pair(rgb, labels.astype(np.uint8), rng, crop)
        return image_pixels(view), view_labels

    @property
    def view_crop_size(self) -> tuple[int, int] | None:
        """(height, width) of augmented views: the fixed resolution (S means S x S); None at native."""
        fixed = self.fixed_grid
        return None if fixed is None else (fixed[0] * self.patch_size, fixed[1] * self.patch_size)

    def to_patches(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., H, W, 3) from :meth:`pixels` -> float32 (..., nh, nw, 3, p, p), on their device."""
        return pixels_uint8_to_patches(pixels, self.patch_size)

    def patches(self, image: ImageInput, name: str | None = None) -> torch.Tensor:
        """(nh, nw, 3, p, p) float32 patches of one image (path, bytes, PIL image or array)."""
        return self.to_patches(self.pixels(image, name))

    def describe(self) -> dict:
        """JSON description of every rule that decides the pixels (resize, limits, decoding)."""
        res = self.resolution
        described = {"resolution": "native" if res is None else (list(res) if isinstance(res, tuple) else res),
                     "max_tokens": self.max_tokens, "patch_size": self.patch_size, "max_pixels": self.max_pixels,
                     "decoding": decoding_rules()}
        if self.jpeg_draft:  # recorded (and compared on resume) only when on: exact runs describe as before
            described["jpeg_draft"] = True
        return described


def image_to_patches(image: ImageInput, patch_size: int, max_tokens: int = DEFAULT_MAX_TOKENS,
                     resolution=None, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> torch.Tensor:
    """Preprocess one image into float32 patches of shape (nh, nw, 3, p, p).

    Accepts a path, encoded bytes, a PIL image (any mode) or a uint8 array, decoded by
    :func:`decode_image`. By default the upstream native-resolution rule applies; see
    :func:`resize_image` for ``resolution``.
    """
    return Preprocess.create(patch_size, resolution, max_tokens, max_pixels).patches(image)
