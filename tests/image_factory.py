"""Image factories for the tests: good images, every image kind and bad-input kind, and the same
images as WebDataset shards and Parquet files (written with the real libraries)."""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def png_bytes(seed: int = 0, width: int = 8, height: int = 6) -> bytes:
    """A small random RGB PNG, encoded."""
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer,
                                                                                                          "PNG")
    return buffer.getvalue()


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
    expected = (gray16 >> 8).astype(np.uint8)
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


# ---------------------------------------------------------------------------------- every image kind
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png16(path: Path, samples: np.ndarray, trns: int | None = None) -> None:
    """A 16-bit PNG written by hand (PIL cannot write 16-bit colour): gray, gray+alpha, RGB or RGBA."""
    if samples.ndim == 2:
        samples = samples[..., None]
    height, width, channels = samples.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\0" + samples[y].astype(">u2").tobytes() for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    extra = _png_chunk(b"tRNS", struct.pack(">H", trns)) if trns is not None else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + extra
                     + _png_chunk(b"IDAT", zlib.compress(rows)) + _png_chunk(b"IEND", b""))


def over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """8-bit colour composited over white, computed independently of PIL."""
    a = alpha.astype(np.float64)[..., None]
    return np.rint((rgb.astype(np.float64) * a + 255.0 * (255.0 - a)) / 255.0).astype(np.uint8)


def _gray3(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2).astype(np.uint8)


def write_image_kinds(folder: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """One file per image kind the decoder converts: name -> (file, the 8-bit RGB it must decode to).

    Expected pixels are computed with numpy from the samples written, except for the lossy (JPEG)
    and PIL-defined (CMYK, YCbCr) kinds, whose reference is PIL's conversion of the same samples.
    """
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    h, w = 20, 28
    out = {}

    def rand(*shape, high=256, dtype=np.uint8):
        return rng.integers(0, high, (h, w, *shape)).astype(dtype)

    rgb = rand(3)
    Image.fromarray(rgb).save(folder / "rgb.png")
    out["rgb-png"] = (folder / "rgb.png", rgb)
    Image.fromarray(rgb).save(folder / "rgb.jpg", quality=95)
    out["rgb-jpeg"] = (folder / "rgb.jpg", np.asarray(Image.open(folder / "rgb.jpg")))
    Image.fromarray(rgb).save(folder / "rgb.bmp")
    out["rgb-bmp"] = (folder / "rgb.bmp", rgb)
    Image.fromarray(rgb).save(folder / "rgb.webp", lossless=True)
    out["rgb-webp-lossless"] = (folder / "rgb.webp", rgb)
    gray = rand()
    Image.fromarray(gray, mode="L").save(folder / "gray.png")
    out["gray"] = (folder / "gray.png", _gray3(gray))
    bits = rand(high=2).astype(bool)
    Image.fromarray(bits).save(folder / "bits.png")
    out["1-bit"] = (folder / "bits.png", _gray3(bits * 255))

    gray16 = rand(high=65536, dtype=np.uint16)
    png16(folder / "gray16.png", gray16)
    out["gray16-png"] = (folder / "gray16.png", _gray3(gray16 >> 8))
    gray16_key = gray16.copy()
    gray16_key[:5] = 1234
    png16(folder / "gray16_trns.png", gray16_key, trns=1234)
    out["gray16-png-trns"] = (folder / "gray16_trns.png", _gray3(np.where(gray16_key == 1234, 255, gray16_key >> 8)))
    Image.fromarray(gray16).save(folder / "gray16.tif")
    out["gray16-tiff"] = (folder / "gray16.tif", _gray3(gray16 >> 8))
    big_endian = Image.new("I;16B", (w, h))
    big_endian.frombytes(gray16.astype(">u2").tobytes())
    big_endian.save(folder / "gray16b.tif")
    out["gray16b-tiff"] = (folder / "gray16b.tif", _gray3(gray16 >> 8))
    (folder / "gray16.pgm").write_bytes(f"P5\n{w} {h}\n65535\n".encode() + gray16.astype(">u2").tobytes())
    out["gray16-pgm"] = (folder / "gray16.pgm", _gray3(gray16 >> 8))
    rgb16 = rand(3, high=65536, dtype=np.uint16)
    png16(folder / "rgb16.png", rgb16)
    out["rgb16-png"] = (folder / "rgb16.png", (rgb16 >> 8).astype(np.uint8))
    rgba16 = rand(4, high=65536, dtype=np.uint16)
    png16(folder / "rgba16.png", rgba16)
    out["rgba16-png"] = (folder / "rgba16.png", over_white(rgba16[..., :3] >> 8, rgba16[..., 3] >> 8))
    la16 = rand(2, high=65536, dtype=np.uint16)
    png16(folder / "la16.png", la16)
    out["la16-png"] = (folder / "la16.png", over_white(_gray3(la16[..., 0] >> 8), la16[..., 1] >> 8))

    rgba = rand(4)
    rgba[0, :, 3], rgba[1, :, 3] = 0, 255
    Image.fromarray(rgba, mode="RGBA").save(folder / "rgba.png")
    out["rgba"] = (folder / "rgba.png", over_white(rgba[..., :3], rgba[..., 3]))
    la = rand(2)
    Image.fromarray(la, mode="LA").save(folder / "la.png")
    out["la"] = (folder / "la.png", over_white(_gray3(la[..., 0]), la[..., 1]))
    keyed = rgb.copy()
    keyed[:4] = (1, 2, 3)
    Image.fromarray(keyed).save(folder / "rgb_trns.png", transparency=(1, 2, 3))
    out["rgb-trns"] = (folder / "rgb_trns.png", np.where((keyed == (1, 2, 3)).all(-1, keepdims=True), 255, keyed))
    gray_keyed = gray.copy()
    gray_keyed[:4] = 7
    Image.fromarray(gray_keyed, mode="L").save(folder / "gray_trns.png", transparency=7)
    out["gray-trns"] = (folder / "gray_trns.png", _gray3(np.where(gray_keyed == 7, 255, gray_keyed)))

    colours = rng.integers(0, 256, (4, 3)).astype(np.uint8)
    indices = rand(high=4)
    palette = Image.fromarray(indices, mode="P")
    palette.putpalette(colours.ravel().tolist())
    palette.save(folder / "palette.png")
    out["palette"] = (folder / "palette.png", colours[indices])
    alphas = np.array([0, 128, 255, 40], dtype=np.uint8)
    palette.save(folder / "palette_alpha.png", transparency=alphas.tobytes())
    out["palette-alpha"] = (folder / "palette_alpha.png", over_white(colours[indices], alphas[indices]))

    cmyk = rand(4)
    Image.fromarray(cmyk, mode="CMYK").save(folder / "cmyk.tif")
    out["cmyk-tiff"] = (folder / "cmyk.tif", np.asarray(Image.fromarray(cmyk, mode="CMYK").convert("RGB")))
    Image.fromarray(cmyk, mode="CMYK").save(folder / "cmyk.jpg", quality=95)
    out["cmyk-jpeg"] = (folder / "cmyk.jpg", np.asarray(Image.open(folder / "cmyk.jpg").convert("RGB")))
    ycbcr = rand(3)
    Image.fromarray(ycbcr, mode="YCbCr").save(folder / "ycbcr.tif")
    out["ycbcr-tiff"] = (folder / "ycbcr.tif", np.asarray(Image.fromarray(ycbcr, mode="YCbCr").convert("RGB")))

    frames = []
    for seed in range(3):
        frame = Image.fromarray(np.random.default_rng(seed).integers(0, 4, (h, w)).astype(np.uint8), mode="P")
        frame.putpalette(colours.ravel().tolist())
        frames.append(frame)
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:])
    out["animated-gif"] = (folder / "animated.gif", colours[np.asarray(frames[0])])
    pages = [rand(3) for _ in range(3)]
    Image.fromarray(pages[0]).save(folder / "pages.tif", save_all=True,
                                   append_images=[Image.fromarray(p) for p in pages[1:]])
    out["multipage-tiff"] = (folder / "pages.tif", pages[0])
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": ignored, as upstream
    Image.fromarray(rgb).save(folder / "exif_rotated.png", exif=exif.tobytes())
    out["exif-orientation-6"] = (folder / "exif_rotated.png", rgb)
    return out


def write_refused_kinds(folder: Path) -> dict[str, Path]:
    """Images whose pixel meaning is unknown (each must fail with kind unsupported-mode): name -> file."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(12)
    out = {"float-tiff": folder / "float.tif", "int32-tiff": folder / "int32.tif",
           "int32-small-values-tiff": folder / "int32_small.tif"}
    Image.fromarray(rng.random((16, 16), dtype=np.float32), mode="F").save(out["float-tiff"])
    Image.fromarray(rng.integers(0, 2**31, (16, 16)).astype(np.int32)).save(out["int32-tiff"])
    # 0..255 stored in 32 bits: scaling it as 16-bit data would make it almost black.
    Image.fromarray(rng.integers(0, 256, (16, 16)).astype(np.int32)).save(out["int32-small-values-tiff"])
    return out


# ---------------------------------------------------------------------------------- shards
def hf_metadata(features: dict) -> dict:
    """Schema metadata as Hugging Face ``datasets`` writes it (checked against datasets 5.2's output:
    ``{"info": {"features": {"image": {"_type": "Image"}, "label": {"names": [...], "_type": "ClassLabel"}}}}``)."""
    return {"huggingface": json.dumps({"info": {"features": features}})}


def write_parquet(path: Path, images: list, labels: list | None, classes: list[str] | None = None,
                  image_column: str = "image", metadata: bool = True, row_group_size: int | None = None) -> Path:
    """A Parquet file of ``{bytes, path}`` image structs (``images``: (bytes or None, path or None))."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {image_column: pa.array([{"bytes": b, "path": p} for b, p in images],
                                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))}
    features = {image_column: {"_type": "Image"}}
    if labels is not None:
        columns["label"] = pa.array(labels, pa.int64())
        features["label"] = ({"names": classes, "_type": "ClassLabel"} if classes is not None
                             else {"dtype": "int64", "_type": "Value"})
    table = pa.table(columns)
    if metadata:
        table = table.replace_schema_metadata(hf_metadata(features))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_tar(path: Path, samples: list[dict]) -> Path:
    """A WebDataset shard: ``samples`` are dicts like ``{"__key__": "a", "png": bytes, "cls": 1}``."""
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    return path


def records_as_shards(records, folder: Path, classes: list[str], shards: int = 3) -> str:
    """Write ``records`` (with paths and labels) as ``shards`` WebDataset shards plus classes.txt;
    returns the brace pattern naming them."""
    per = -(-len(records) // shards)
    for s in range(shards):
        chunk = records[s * per:(s + 1) * per]
        write_tar(folder / f"train-{s:06d}.tar",
                  [{"__key__": Path(r.path).stem, Path(r.path).suffix[1:].lower(): Path(r.path).read_bytes(),
                    "cls": r.label} for r in chunk])
    (folder / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    return str(folder / f"train-{{000000..{shards - 1:06d}}}.tar")


def records_as_parquet(records, path: Path, classes: list[str]) -> Path:
    return write_parquet(path, [(Path(r.path).read_bytes(), os.path.basename(r.path)) for r in records],
                         [r.label for r in records], classes, row_group_size=2)
