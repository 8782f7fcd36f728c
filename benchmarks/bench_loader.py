"""Does extract's loader keep up? Images/s of one loader worker against bare PIL on the same JPEGs.

One worker's work in `sail-vision extract` is ``BatchDecoder`` (timed here with one torch thread,
as torch's DataLoader workers run): decode with the one decoder (checks,
RGB conversion), resize (bilinear, shorter side then center crop), stack a batch of uint8 pixels.
This script times that (in this process: the per-worker rate; workers scale it by their count)
against the least a loader can do with PIL: ``Image.open(...).convert("RGB")``, the same resize and
crop, ``np.asarray`` -- on the same ImageNet-like JPEGs, alternating the contenders (target: the
loader >= 0.9x bare PIL). Both paths run exact and with JPEG draft decoding (``--jpeg-draft``: DCT
scaling by 1/2, 1/4 or 1/8 before the resize), and the draft path's difference from the exact one
is measured on the pixels and on mean-pooled features of a random small SAIL-shaped checkpoint.

    python benchmarks/bench_loader.py            # 300 images per size (500x375 and 1600x1200), ~5 min on 1 core
    python benchmarks/bench_loader.py --quick    # 24 images per size, for CI
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import DEFAULT_CACHE_DIR, alternate, cached_checkpoint, median, print_table, run_and_save  # noqa: E402

#: (width, height) of the generated JPEGs: ImageNet's most common size, and a large photo where DCT
#: scaling applies at 224 px (it needs a side at least twice the resized side).
SIZES = ((500, 375), (1600, 1200))


def photo_jpeg(width: int, height: int, rng: np.random.Generator, quality: int = 90) -> bytes:
    """A photo-like JPEG (smooth gradients, blocks of colour and fine noise: compresses like a photo)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32) / max(width, height)
    coarse = rng.random((height // 24 + 1, width // 24 + 1, 3), dtype=np.float32)
    blocks = np.kron(coarse, np.ones((24, 24, 1), np.float32))[:height, :width]
    rgb = 0.45 * np.stack([x, y, 1 - x], -1) + 0.45 * blocks + 0.1 * rng.random((height, width, 3), dtype=np.float32)
    buffer = io.BytesIO()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def write_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:05d}.jpg"
        path.write_bytes(photo_jpeg(*size, rng))
        paths.append(str(path))
    return paths


def bare_pil(paths, resolution: int, draft: bool) -> np.ndarray:
    """The least a loader does: open, (draft,) convert to RGB, resize the shorter side, center crop."""
    out = np.empty((len(paths), resolution, resolution, 3), np.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            width, height = image.size
            scale = resolution / min(width, height)
            size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
            if draft:
                image.draft("RGB", size)
            resized = image.convert("RGB").resize(size, Image.BILINEAR)
        left, top = (size[0] - resolution) // 2, (size[1] - resolution) // 2
        out[i] = np.asarray(resized.crop((left, top, left + resolution, top + resolution)))
    return out


def loader_pixels(paths, preprocess, batch: int) -> np.ndarray:
    """extract's loader on one worker (``workers=0``: the worker's own code, in this process)."""
    from sail_vision.extraction.loader import batch_loader

    grids = np.tile(np.asarray(preprocess.fixed_grid), (len(paths), 1))
    batches = [np.arange(i, min(i + batch, len(paths))) for i in range(0, len(paths), batch)]
    out = []
    for result in batch_loader(paths, preprocess, grids, batches, workers=0):
        if result["failures"]:
            raise RuntimeError(f"loader failures: {result['failures'][:3]}")
        out.append(result["pixels"].numpy())
    return np.concatenate(out)


def feature_difference(paths, exact, draft, device: str, dtype: str) -> dict:
    """Mean-pooled last-layer features of exact vs draft pixels on a random small SAIL-shaped checkpoint."""
    import torch

    from sail_vision import SailEncoder

    encoder = SailEncoder.from_pretrained(cached_checkpoint(DEFAULT_CACHE_DIR, "small"), dtype=dtype, device=device)
    pre = exact
    features = {}
    for name, preprocess in (("exact", exact), ("draft", draft)):
        rows = []
        for i in range(0, len(paths), 16):
            pixels = torch.stack([preprocess.pixels(p) for p in paths[i:i + 16]]).to(device)
            rows.append(encoder.encode_patches(pre.to_patches(pixels), [-1]).mean_patch(-1).float().cpu())
        features[name] = torch.cat(rows)
    a, b = features["exact"], features["draft"]
    relative = ((a - b).norm(dim=1) / a.norm(dim=1)).numpy()
    cosine = torch.nn.functional.cosine_similarity(a, b, dim=1).numpy()
    return {"feature_rel_diff_median": float(np.median(relative)), "feature_rel_diff_max": float(relative.max()),
            "feature_cosine_min": float(cosine.min()), "feature_model": "random 'small' preset (12 layers, 1024-d)"}


def run(args) -> dict:
    import torch

    from sail_vision.preprocessing import Preprocess

    torch.set_num_threads(1)  # as in a DataLoader worker (torch's worker loop sets one thread)

    exact = Preprocess.create(32, args.resolution)
    draft = Preprocess.create(32, args.resolution, jpeg_draft=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        for size in SIZES:
            paths = write_jpegs(Path(tmp) / f"{size[0]}x{size[1]}", args.images, size)
            times = alternate({
                "pil": lambda: bare_pil(paths, args.resolution, False),
                "pil_draft": lambda: bare_pil(paths, args.resolution, True),
                "loader": lambda: loader_pixels(paths, exact, args.batch),
                "loader_draft": lambda: loader_pixels(paths, draft, args.batch),
            }, args.rounds, warmup=1)
            rate = {name: len(paths) / median(t) for name, t in times.items()}
            best = {name: len(paths) / min(t) for name, t in times.items()}  # the least disturbed round
            a, b = loader_pixels(paths, exact, args.batch).astype(np.int16), loader_pixels(paths, draft, args.batch)
            same_as_pil = bool(np.array_equal(loader_pixels(paths, exact, args.batch), bare_pil(paths, args.resolution,
                                                                                                  False)))
            row = {"jpeg": f"{size[0]}x{size[1]}", "images": len(paths), "resolution": args.resolution,
                   "pil_img_s": rate["pil"], "loader_img_s": rate["loader"],
                   "loader_vs_pil": rate["loader"] / rate["pil"],
                   "pil_draft_img_s": rate["pil_draft"], "loader_draft_img_s": rate["loader_draft"],
                   "loader_draft_vs_pil": rate["loader_draft"] / rate["pil"],
                   "loader_draft_vs_pil_draft": rate["loader_draft"] / rate["pil_draft"],
                   "draft_speedup": rate["loader_draft"] / rate["loader"],
                   "best_pil_img_s": best["pil"], "best_loader_img_s": best["loader"],
                   "best_pil_draft_img_s": best["pil_draft"], "best_loader_draft_img_s": best["loader_draft"],
                   "best_loader_draft_vs_pil_draft": best["loader_draft"] / best["pil_draft"],
                   "best_loader_vs_pil": best["loader"] / best["pil"],
                   "best_draft_speedup": best["loader_draft"] / best["loader"],
                   "loader_equals_pil": same_as_pil,
                   "pixel_mean_abs_diff": float(np.abs(a - b).mean()), "pixel_max_abs_diff": int(np.abs(a - b).max()),
                   "times_s": times}
            if not args.no_features:
                row.update(feature_difference(paths[:args.feature_images], exact, draft, "cpu", "float32"))
            rows.append(row)
    print_table(rows, ["jpeg", "pil_img_s", "loader_img_s", "loader_vs_pil", "loader_draft_img_s", "draft_speedup",
                       "pixel_mean_abs_diff", "feature_rel_diff_median", "feature_cosine_min"],
                title=f"one loader worker vs bare PIL, {args.resolution} px (images/s, medians)")
    print_table(rows, ["jpeg", "best_pil_img_s", "best_loader_img_s", "best_loader_vs_pil", "best_loader_draft_img_s",
                       "best_draft_speedup"], title="the same, fastest round of each (least disturbed by other jobs)")
    return {"rows": rows, "rounds": args.rounds, "target_loader_vs_pil": 0.9}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="24 images per size, 2 rounds, 4 feature images")
    parser.add_argument("--images", type=int, default=300, help="JPEGs per size (default: 300)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timing rounds (default: 3)")
    parser.add_argument("--resolution", type=int, default=224, help="center-crop size (default: 224)")
    parser.add_argument("--batch", type=int, default=16, help="images per loader batch (default: 16)")
    parser.add_argument("--feature-images", type=int, default=32,
                        help="images encoded for the feature difference (default: 32)")
    parser.add_argument("--no-features", action="store_true", help="skip the feature difference (default: measured)")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.rounds, args.feature_images = 24, 2, 4
    run_and_save(parser, lambda: run(args), "bench_loader", args.quick)


if __name__ == "__main__":
    main()
