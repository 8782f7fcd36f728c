"""Shared helpers for the benchmark scripts: alternating timing, medians, peak RSS, cached
checkpoints, machine facts, JSON results and printed tables.

Every comparison alternates its contenders (round robin, the order reversed each round) so that
noise from other processes on the machine hits all of them alike; the median is reported.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Mapping

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DEFAULT_CACHE_DIR = Path(os.environ.get("SAIL_BENCH_CACHE", "/work/bench-cache"))


def median(values) -> float:
    return float(statistics.median(values))


def alternate(contenders: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1, *,
              self_timed: bool = False) -> dict[str, list[float]]:
    """Time each zero-argument callable ``repeats`` times, interleaved: round r runs the contenders
    in order (reversed on odd rounds). ``warmup`` untimed rounds come first. Returns seconds per call;
    with ``self_timed`` each callable returns its own elapsed seconds (e.g. timed in another process)."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in (names if r % 2 == 0 else names[::-1]):
            start = time.perf_counter()
            result = contenders[name]()
            times[name].append(float(result) if self_timed else time.perf_counter() - start)
    return times


def peak_rss_bytes() -> int:
    """This process's peak resident set size (VmHWM from /proc, else ru_maxrss)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def free_disk_bytes(path: Path) -> int:
    path = Path(path)
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine_info() -> dict:
    """Facts that explain the numbers: CPU model, cores, bf16 matrix support, library versions."""
    import torch

    flags = cpu_flags()
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        import transformers
        tf_version = transformers.__version__
    except ImportError:  # pragma: no cover - transformers is a dependency
        tf_version = None
    return {
        "cpu": model or platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "bf16_flags": sorted(f for f in flags if f.startswith("amx") or f == "avx512_bf16"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": tf_version,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "argv": sys.argv,
    }


def cached_checkpoint(cache_dir: Path, preset: str, *, dtype: str = "float32", seed: int = 0,
                      **overrides) -> Path:
    """A random checkpoint written once under ``cache_dir`` and reused (checked by loading its index)."""
    from sail_vision.checkpoint_generator import cached_checkpoint as cached

    extra = "".join(f"-{k}{v}" for k, v in sorted(overrides.items()))
    path = Path(cache_dir) / f"{preset}-{dtype}-seed{seed}{extra}"
    return cached(path, preset, seed=seed, dtype=dtype, progress=True, **overrides)[0]


def write_results(name: str, payload: dict, quick: bool, results_dir: Path = RESULTS_DIR) -> Path:
    """Save ``payload`` (plus machine facts) as results/<name>[-quick].json; returns the path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"{name}{'-quick' if quick else ''}.json"
    data = {"benchmark": name, "quick": quick, "machine": machine_info(), **payload}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def run_and_save(parser, run: Callable[[], dict], name: str, quick: bool) -> Path:
    """Run a benchmark, turn sail-vision's input errors into a one-line exit 2, save its JSON."""
    from sail_vision.errors import SailVisionError

    try:
        payload = run()
    except SailVisionError as exc:
        parser.exit(2, f"error: {exc}\n")
    path = write_results(name, payload, quick)
    print(f"saved {path}")
    return path


def print_table(rows: list[dict], columns: list[str], title: str | None = None) -> str:
    """Print (and return) rows as an aligned Markdown table, floats with 3 significant digits."""
    def fmt(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return "" if value is None else str(value)

    cells = [[fmt(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) if cells else len(c) for i, c in enumerate(columns)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in cells]
    text = ("\n" + title + "\n" if title else "") + "\n".join(lines)
    print(text, flush=True)
    return text


# ------------------------------------------------------------------ `extract` vs the bare encoder
def synchronize(device) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def write_noise_jpegs(folder: Path, count: int, *, seed: int = 0, sides: tuple[int, int] = (300, 500)) -> list[Path]:
    """``count`` JPEGs of uniform noise (PIL's default quality), each side drawn from ``sides``
    (ImageNet-like sizes: `extract` resizes the shorter side and center crops); names sort in order."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        w, h = (int(v) for v in rng.integers(*sides, size=2))
        paths.append(folder / f"{i:05d}.jpg")
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(paths[-1])
    return paths


def bare_encode(encoder, preprocess, pixels, *, batch: int, device, save_dtype: str = "float16"):
    """`extract`'s device work on already decoded images, and nothing else: for each batch of
    ``batch`` uint8 pixels (N, H, W, 3), upload, ``Preprocess.to_patches``, ``encode_patches``
    keeping the last layer, mean-pool, cast to ``save_dtype`` and copy to a numpy array.
    Returns the (N, D) features; the device is synchronised at the end."""
    import numpy as np
    import torch

    out = []
    dtype = getattr(torch, save_dtype)
    for i in range(0, len(pixels), batch):
        encoding = encoder.encode_patches(preprocess.to_patches(pixels[i:i + batch].to(device)), [-1])
        out.append(encoding.pooled(encoder.num_layers, "mean").to(dtype).cpu().numpy())
    synchronize(device)
    return np.concatenate(out)


def extract_vs_encoder(checkpoint: Path, images: Path, work: Path, *, resolution, dtype: str, device,
                       batch: int, workers: list[int], rounds: int, warmup: int = 1,
                       save_dtype: str = "float16") -> dict:
    """`extract` end to end (into a fresh folder each call: plan, load, decode, encode, copy, write,
    finalise) against the bare encoder (``bare_encode``, the encoder loaded once, the images decoded
    once beforehand) on the same images, alternating round by round in this process (``alternate``),
    one `extract` contender per ``workers`` value. Returns rows (one per workers value: medians,
    ratio of the medians, median of the per-round ratios), every time, and how far the features of
    the last `extract` are from the bare encoder's (max abs difference, in ``save_dtype``)."""
    import numpy as np
    import torch

    from sail_vision import SailEncoder
    from sail_vision.extraction import extract
    from sail_vision.feature_store import open_feature_dir
    from sail_vision.preprocessing import Preprocess

    device = torch.device(device)
    encoder = SailEncoder.from_pretrained(checkpoint, dtype=dtype, device=device)
    pre = Preprocess.create(encoder.patch_size, resolution)
    paths = sorted(p for p in Path(images).iterdir() if p.suffix == ".jpg")
    pixels = torch.stack([pre.pixels(str(p)) for p in paths])
    bare = {}

    def run_encoder() -> float:
        synchronize(device)
        start = time.perf_counter()
        bare["features"] = bare_encode(encoder, pre, pixels, batch=batch, device=device, save_dtype=save_dtype)
        return time.perf_counter() - start

    calls = itertools.count()
    last = {}

    def run_extract(n_workers: int) -> float:
        out = Path(work) / f"extract-{next(calls)}"
        start = time.perf_counter()
        result = extract(checkpoint, images, out, layers=[-1], pools=["mean"], resolution=resolution, dtype=dtype,
                         device=str(device), batch_size=batch, workers=n_workers, save_dtype=save_dtype,
                         progress=False)
        seconds = time.perf_counter() - start
        if result.num_valid != len(paths):
            raise RuntimeError(f"extract encoded {result.num_valid} of {len(paths)} images")
        if "out" in last:
            shutil.rmtree(last["out"])
        last["out"] = out
        return seconds

    contenders = {"encoder": run_encoder}
    contenders.update({f"extract-w{w}": (lambda w=w: run_extract(w)) for w in workers})
    times = alternate(contenders, rounds, warmup, self_timed=True)
    store = open_feature_dir(last["out"])
    stored = np.asarray(store.feature(store.name_for(-1, "mean")))
    by_name = {Path(p).name: i for i, p in enumerate(store.paths)}
    stored = stored[[by_name[p.name] for p in paths]]
    max_abs_diff = float(np.abs(stored.astype(np.float32) - bare["features"].astype(np.float32)).max())
    shutil.rmtree(last["out"])
    n = len(paths)
    encoder_s = median(times["encoder"])
    rows = []
    for w in workers:
        ext = times[f"extract-w{w}"]
        rows.append({"workers": w, "images": n, "batch": batch, "resolution": resolution, "dtype": dtype,
                     "extract_images_s": n / median(ext), "encoder_images_s": n / encoder_s,
                     "extract_vs_encoder": encoder_s / median(ext),
                     "paired_ratio": median([e / x for e, x in zip(times["encoder"], ext)])})
    return {"rows": rows, "times_s": times, "rounds": rounds, "warmup": warmup,
            "features_max_abs_diff": max_abs_diff}
