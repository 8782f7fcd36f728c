"""The names, constants and manifest of a feature folder: what its files are called, how the
manifest is read, written and checked against the files. See the package docstring for the layout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import SailVisionError
from .atomic_io import atomic_write_text

FORMAT_NAME = "sail-vision-features"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
VALID_FILE = "valid.npy"
LABELS_FILE = "labels.npy"
PATHS_FILE = "paths.txt"
FAILURES_FILE = "failures.jsonl"
PATCH_GRIDS_FILE = "patch_grids.npy"
MASKS_FILE = "masks.npy"
MASK_OFFSETS_FILE = "mask_offsets.npy"
MASK_PATHS_FILE = "mask_paths.txt"
#: The label of pixels that count for nothing in stored masks (mmseg's ``ignore_index``).
MASK_IGNORE_INDEX = 255
#: Working files of an unfinished extraction (plan, per-rank row status, failure logs).
STATE_DIR = ".extract"
#: The parts of an extraction that is not consolidated yet (see ``extraction.parts``).
PARTS_DIR = "parts"
#: Every fixed name an extraction writes in its folder.
OWN_FILES = (MANIFEST_FILE, VALID_FILE, LABELS_FILE, PATHS_FILE, FAILURES_FILE, PATCH_GRIDS_FILE, MASKS_FILE,
             MASK_OFFSETS_FILE, MASK_PATHS_FILE, STATE_DIR, PARTS_DIR)

#: Layouts of a feature array: one vector per image, a patch grid per image (fixed resolution),
#: or patch rows of all images concatenated (native resolution; see the offsets file).
LAYOUTS = ("pooled", "grid", "rows")

_NAME_RE = re.compile(r"^layer-(\d+)_([a-z]+)$")
FEATURE_FILE_RE = re.compile(r"^layer-\d+_(?:[a-z]+|patch_offsets)\.npy$")


class FeatureStoreError(SailVisionError):
    """A feature folder is missing, unfinished, malformed, or lacks a requested feature."""


def mask_manifest_entry(native: bool, *, reduce_zero_label: bool = False, num_classes: int | None = None,
                        classes: Sequence[str] | None = None, depth_scale: float | None = None) -> dict:
    """The manifest's ``"masks"`` entry, the one slot for a dense target per image: label maps
    (uint8; no ``"kind"``, as before depth existed) or, with ``depth_scale``, depth maps (``"kind": "depth"``, float32
    metres, 0 = no measurement, ``depth_scale`` 16-bit PNG values per metre), at native resolution
    (``"rows"`` + offsets) or at a fixed one (``"grid"``), and the rules that made them."""
    layout = {"file": MASKS_FILE, "layout": "rows" if native else "grid",
              "offsets": MASK_OFFSETS_FILE if native else None, "resize": "nearest"}
    if depth_scale is not None:
        return {**layout, "kind": "depth", "dtype": "float32", "unit": "metre", "no_measurement": 0.0,
                "depth_scale": float(depth_scale),
                "decoding": "16-bit PNG: float32(value) * (1 / depth_scale); .npy: float metres, NaN -> 0"}
    return {**layout, "dtype": "uint8", "ignore_index": MASK_IGNORE_INDEX,
            "reduce_zero_label": bool(reduce_zero_label), "num_classes": None if num_classes is None else int(num_classes),
            "classes": None if classes is None else list(classes)}


def feature_name(layer: int, pool: str) -> str:
    """The name (and file stem) of a (layer, pool) feature: ``layer-{k}_{pool}``."""
    if int(layer) < 0:
        raise FeatureStoreError(f"feature names use non-negative layer indices, got {layer}")
    return f"layer-{int(layer)}_{pool}"


def offsets_file_name(layer: int) -> str:
    """File of the (N+1,) row offsets of a native-resolution patch feature."""
    return f"layer-{int(layer)}_patch_offsets.npy"


def parse_feature_name(name: str) -> tuple[int | None, str | None]:
    """``'layer-4_mean'`` -> (4, 'mean'); any other name -> (None, None)."""
    match = _NAME_RE.match(name)
    return (int(match.group(1)), match.group(2)) if match else (None, None)


def software_versions() -> dict[str, str]:
    """The versions recorded in a manifest's ``"software"``."""
    import platform

    from .. import __version__

    versions = {"sail_vision": __version__, "python": platform.python_version(), "numpy": np.__version__}
    for module in ("torch", "transformers", "PIL"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - versions are informative only
            pass
    return versions


def manifest_header(*, complete: bool) -> dict[str, Any]:
    """The fields that open every manifest: format, version and completeness."""
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "complete": bool(complete)}


def write_manifest(out_dir: str | Path, manifest: Mapping[str, Any]) -> None:
    """Atomically (re)write ``manifest.json``."""
    atomic_write_text(Path(out_dir) / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=False) + "\n")


def read_manifest(path: str | Path) -> dict:
    """Parse ``manifest.json`` of a feature folder (finished or not) and check its format."""
    folder = Path(path)
    if not folder.exists():
        raise FeatureStoreError(f"{folder}: no such feature folder; create it with `sail-vision extract`")
    if not folder.is_dir():
        raise FeatureStoreError(f"{folder}: not a folder; pass the --out folder of `sail-vision extract`")
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.is_file():
        raise FeatureStoreError(f"{folder}: no {MANIFEST_FILE}; this is not a sail-vision feature folder "
                                f"(or its extraction never started)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FeatureStoreError(f"{manifest_path}: malformed JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise FeatureStoreError(f"{manifest_path}: not a sail-vision feature manifest "
                                f"(expected \"format\": \"{FORMAT_NAME}\")")
    version = manifest.get("version")
    if version != FORMAT_VERSION:
        raise FeatureStoreError(f"{manifest_path}: format version {version!r} is not supported by this "
                                f"sail-vision (it reads version {FORMAT_VERSION}); upgrade sail-vision or "
                                f"re-extract")
    return manifest


def manifest_files(manifest: Mapping | None) -> set[str]:
    """The feature and offsets files a manifest names."""
    files: set[str] = set()
    for info in ((manifest or {}).get("features") or {}).values():
        if isinstance(info, dict):
            files.update(v for k, v in info.items() if k in ("file", "offsets") and isinstance(v, str))
    return files


def parted_files(folder: Path, manifest: Mapping, file: str) -> list[Path] | None:
    """The per-part files holding ``file`` of a folder whose parts are not joined yet, else None."""
    parts = manifest.get("parts") or {}
    if parts.get("consolidated", True):
        return None
    return [folder / PARTS_DIR / item["name"] / file for item in parts["items"]]


def count_lines(file: Path) -> int:
    """Complete lines (``\\n``-terminated) of a text file, read in chunks (memory stays flat)."""
    count = 0
    with open(file, "rb") as handle:
        while chunk := handle.read(1 << 22):
            count += chunk.count(b"\n")
    return count


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a .npy file without reading its data."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
    return tuple(int(s) for s in shape), np.dtype(dtype)


def check_manifest(folder: Path, manifest: dict) -> None:
    """Check a finished manifest against the files of ``folder`` (shapes, dtypes, row counts, lines);
    a :class:`FeatureStoreError` names the first mismatch."""
    where = folder / MANIFEST_FILE

    def fail(message: str):
        raise FeatureStoreError(f"{where}: {message}")

    num_items = manifest.get("num_items")
    if not isinstance(num_items, int) or isinstance(num_items, bool) or num_items < 0:
        fail(f"\"num_items\" must be a non-negative integer, got {num_items!r}")
    features = manifest.get("features")
    if not isinstance(features, dict):
        fail("\"features\" must be an object mapping names to file descriptions")
    valid_file = manifest.get("valid")
    if not isinstance(valid_file, str):
        fail("\"valid\" (the per-row validity file) is missing")
    _check_array(folder, valid_file, (num_items,), fail, kinds="b")
    for name, info in features.items():
        if not isinstance(info, dict) or not isinstance(info.get("file"), str):
            fail(f"feature {name!r} has no \"file\"")
        shape, dtype = _check_stored(folder, manifest, info["file"], fail)
        if list(shape) != list(info.get("shape", shape)) or str(dtype) != info.get("dtype", str(dtype)):
            fail(f"feature {name!r}: {info['file']} holds {shape} {dtype}, but the manifest says "
                 f"{info.get('shape')} {info.get('dtype')}")
        layout = info.get("layout", "pooled")
        if layout not in LAYOUTS:
            fail(f"feature {name!r}: unknown layout {layout!r}")
        if layout == "rows":
            if not isinstance(info.get("offsets"), str):
                fail(f"feature {name!r}: native-resolution patch rows need an \"offsets\" file")
            _check_array(folder, info["offsets"], (num_items + 1,), fail, kinds="iu")
        elif not shape or shape[0] != num_items:
            fail(f"feature {name!r}: {info['file']} has {shape[0] if shape else 0} rows, expected {num_items}")
    if manifest.get("masks"):
        _check_masks(folder, manifest, num_items, fail)
    if manifest.get("labels"):
        _check_array(folder, manifest["labels"], (num_items,), fail, kinds="iu")
    if manifest.get("patch_grids"):
        _check_array(folder, manifest["patch_grids"], (num_items, 2), fail, kinds="iu")
    classes = manifest.get("classes")
    if classes is not None and not (isinstance(classes, list) and all(isinstance(c, str) for c in classes)):
        fail("\"classes\" must be a list of strings or null")
    if manifest.get("paths"):
        _check_lines(folder, manifest["paths"], num_items)
    if manifest.get("masks") and (folder / MASK_PATHS_FILE).is_file():
        _check_lines(folder, MASK_PATHS_FILE, num_items)


def _check_lines(folder: Path, file: str, num_items: int) -> None:
    """A one-line-per-row text file holds exactly ``num_items`` lines (else rows and names would shift)."""
    path = folder / file
    if not path.is_file():
        raise FeatureStoreError(f"{folder}: {file} is missing")
    lines = count_lines(path)
    if lines != num_items or (num_items == 0 and path.stat().st_size):
        raise FeatureStoreError(f"{folder}: {file} has {lines} line(s) but the features have {num_items} row(s), so "
                                f"rows and names would not match; re-extract this folder")


def _check_stored(folder: Path, manifest: dict, file: str, fail, kinds: str | None = None):
    """(shape, dtype) of ``file`` as the reader sees it: the file itself, or its parts' files joined
    along rows while they are not consolidated (each checked, all of one dtype; trailing dims from the first)."""
    parted = parted_files(folder, manifest, file)
    if parted is None:
        return _check_array(folder, file, None, fail, kinds=kinds)
    found = [_check_array(folder, str(f.relative_to(folder)), None, fail, kinds=kinds) for f in parted]
    if len({d for _, d in found}) > 1:
        fail(f"the parts' {file} differ in dtype ({', '.join(sorted({str(d) for _, d in found}))}); re-extract")
    return (sum(s[0] for s, _ in found), *found[0][0][1:]), found[0][1]


def _check_masks(folder: Path, manifest: dict, num_items: int, fail) -> None:
    info = manifest["masks"]
    if not isinstance(info, dict) or not isinstance(info.get("file"), str) or info.get("layout") not in ("grid", "rows"):
        fail("\"masks\" needs a \"file\" and a \"layout\" (grid or rows)")
    depth = info.get("kind") == "depth"
    shape, dtype = _check_stored(folder, manifest, info["file"], fail, kinds="f" if depth else "u")
    if dtype != (np.float32 if depth else np.uint8):
        fail(f"{info['file']} must hold " + ("float32 depths in metres" if depth else "uint8 labels"))
    if info["layout"] == "grid":
        if len(shape) != 3 or shape[0] != num_items:
            fail(f"{info['file']} has shape {shape}, expected ({num_items}, H, W)")
        return
    if not isinstance(info.get("offsets"), str):
        fail("native-resolution masks (\"layout\": \"rows\") need an \"offsets\" file")
    _check_array(folder, info["offsets"], (num_items + 1,), fail, kinds="iu")
    last = int(np.load(folder / info["offsets"], mmap_mode="r")[-1])
    if len(shape) != 1 or shape[0] != last:
        fail(f"{info['file']} has shape {shape}, but {info['offsets']} ends at {last}")


def _check_array(folder: Path, file: str, shape, fail, kinds: str | None = None):
    path = folder / file
    if not path.is_file():
        fail(f"{file} is missing")
    try:
        actual_shape, dtype = npy_header(path)
    except (OSError, ValueError) as exc:
        fail(f"{file} is not a readable .npy file ({exc})")
    if shape is not None and actual_shape != tuple(shape):
        fail(f"{file} has shape {actual_shape}, expected {tuple(shape)}")
    if kinds is not None and dtype.kind not in kinds:
        fail(f"{file} has dtype {dtype}, expected kind {kinds!r}")
    return actual_shape, dtype
