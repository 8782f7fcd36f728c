"""Image factories for the extraction tests: good images and every bad-input kind."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def save_rgb(path: Path, width: int, height: int, seed: int = 0) -> np.ndarray:
    """Write a random RGB image (PNG or JPEG by suffix) and return its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


def bomb_png(path: Path, width: int = 20000, height: int = 20000) -> None:
    """A PNG whose header claims width x height pixels (the data is never decoded)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16))
                     + chunk(b"IEND", b""))


def write_bad_inputs(folder: Path) -> dict[str, Path]:
    """One file per bad-input kind the extractor must skip (name -> path)."""
    folder.mkdir(parents=True, exist_ok=True)
    good = Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    buf = io.BytesIO()
    good.save(buf, "PNG")
    png = bytearray(buf.getvalue())
    for i in range(len(png) // 3, len(png) // 3 + 40):
        png[i] ^= 0xFF
    paths = {
        "corrupt": folder / "corrupt.png",
        "truncated": folder / "truncated.jpg",
        "empty": folder / "empty.jpg",
        "not-image": folder / "notes.jpg",
        "too-large": folder / "bomb.png",
        "unsupported-mode": folder / "float.tif",
    }
    paths["corrupt"].write_bytes(bytes(png))
    buf = io.BytesIO()
    good.save(buf, "JPEG")
    paths["truncated"].write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    paths["empty"].write_bytes(b"")
    paths["not-image"].write_text("this is not an image\n")
    bomb_png(paths["too-large"])
    floats = np.random.default_rng(6).random((24, 24), dtype=np.float32)
    Image.fromarray(floats, mode="F").save(paths["unsupported-mode"])
    return paths


def write_convertible_inputs(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """Modes that are converted, not failed: name -> (path, the RGB uint8 pixels they must become)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    out = {}
    gray16 = (rng.integers(0, 65536, (32, 40))).astype(np.uint16)
    gray16[0, 0], gray16[0, 1] = 65535, 40000  # values a clipping conversion would turn into 255
    Image.fromarray(gray16).save(folder / "gray16.png")
    expected = np.rint(gray16 * (255 / 65535)).astype(np.uint8)
    out["16-bit"] = (folder / "gray16.png", np.repeat(expected[..., None], 3, axis=2))
    cmyk = Image.fromarray(rng.integers(0, 256, (32, 40, 4), dtype=np.uint8), mode="CMYK")
    cmyk.save(folder / "cmyk.jpg")
    out["cmyk"] = (folder / "cmyk.jpg", np.asarray(Image.open(folder / "cmyk.jpg").convert("RGB")))
    palette = Image.fromarray(rng.integers(0, 4, (32, 40), dtype=np.uint8), mode="P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30] + [0] * (256 * 3 - 12))
    palette.info["transparency"] = 3
    palette.save(folder / "palette_alpha.png", transparency=3)
    indices = np.asarray(palette)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]], dtype=np.uint8)
    out["palette-alpha"] = (folder / "palette_alpha.png", colours[indices])
    gray = rng.integers(0, 256, (32, 40), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(folder / "gray.png")
    out["grayscale"] = (folder / "gray.png", np.repeat(gray[..., None], 3, axis=2))
    return out
