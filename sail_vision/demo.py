"""``sail-vision demo``: the whole pipeline in seconds, with nothing to download.

Makes (once, then cached) a tiny random SAIL-format checkpoint, writes sample photos that
scikit-learn ships plus a few crops / resizes of them, extracts features, and draws a PCA picture.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import SailVisionError

DEMO_MARKER = ".sail-vision-demo"
DEMO_CHECKPOINT = "tiny-seed0"
#: Patch cap for the demo's native-resolution extraction (the tiny model has 8-pixel patches).
DEMO_MAX_TOKENS = 1024


def cache_dir() -> Path:
    """$SAIL_VISION_CACHE, else $XDG_CACHE_HOME/sail-vision, else ~/.cache/sail-vision."""
    if os.environ.get("SAIL_VISION_CACHE"):
        return Path(os.environ["SAIL_VISION_CACHE"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "sail-vision"
    return Path.home() / ".cache" / "sail-vision"


def demo_checkpoint(cache: Path | None = None) -> tuple[Path, bool]:
    """(path, made_now): the cached tiny random checkpoint, written on first use or if broken."""
    from .checkpoint_generator import cached_checkpoint

    path = (cache or cache_dir()) / "checkpoints" / DEMO_CHECKPOINT
    try:
        return cached_checkpoint(path, "tiny", seed=0)
    except OSError as exc:
        raise SailVisionError(f"cannot write the demo checkpoint under {path.parent} ({exc.strerror}); set "
                              f"SAIL_VISION_CACHE to a writable folder") from None


def write_sample_images(folder: Path) -> list[Path]:
    """scikit-learn's two sample photos plus crops / resizes of them, in several sizes and modes."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    photos = load_sample_images()
    china, flower = (Image.fromarray(a) for a in photos.images)
    width, height = china.size
    samples = {
        "china.jpg": china,
        "flower.jpg": flower,
        "china_square_crop.png": china.crop((170, 60, 470, 360)),
        "china_portrait_crop.jpg": china.crop((220, 20, 420, 400)),
        "flower_small.jpg": flower.resize((width // 3, height // 3), Image.BILINEAR),
        "flower_grayscale.png": flower.resize((width // 2, height // 2), Image.BILINEAR).convert("L"),
    }
    paths = []
    for name, image in samples.items():
        path = folder / name
        image.save(path, quality=92) if name.endswith(".jpg") else image.save(path)
        paths.append(path)
    return paths


@dataclass
class DemoResult:
    out: Path
    checkpoint: Path
    checkpoint_made: bool
    images: list[Path]
    features: Path
    pca_picture: Path
    summary: str
    seconds: float


def _prepare_out(out: Path) -> None:
    import shutil

    if out.exists():
        if not out.is_dir():
            raise SailVisionError(f"--out {out}: exists and is not a folder")
        if any(out.iterdir()) and not (out / DEMO_MARKER).is_file():
            raise SailVisionError(f"--out {out}: exists and was not made by `sail-vision demo`; choose another "
                                  f"--out (the demo only replaces its own folders)")
        for child in ("images", "features", "pca.png"):
            target = out / child
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARKER).write_text("made by `sail-vision demo`; safe to delete\n")


def run_demo(out: str | Path = "sail-vision-demo", *, progress: bool = True) -> DemoResult:
    """Run the demo into ``out`` and return where everything is."""
    from .extraction import extract
    from .feature_store import open_feature_dir
    from .pca import maps_from_feature_dir, pca_rgb, render_pca_figure

    started = time.monotonic()
    out = Path(out).expanduser().absolute()
    _prepare_out(out)
    checkpoint, made = demo_checkpoint()
    images = write_sample_images(out / "images")
    result = extract(checkpoint, out / "images", out / "features", layers=[2, -1], pools=["patch", "mean", "end"],
                     max_tokens=DEMO_MAX_TOKENS, dtype="float32", device="cpu", batch_size=4, workers=0,
                     save_dtype="float32", progress=progress)
    features = open_feature_dir(out / "features")
    shown, maps, titles, name = maps_from_feature_dir(features, limit=len(images))
    picture = render_pca_figure(shown, pca_rgb(maps), out / "pca.png", titles,
                                suptitle=f"PCA of {name} (random tiny checkpoint)")
    return DemoResult(out, checkpoint, made, images, out / "features", picture, result.summary(),
                      time.monotonic() - started)
