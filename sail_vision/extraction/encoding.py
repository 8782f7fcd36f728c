"""Encoding one part: decoded batches through the model, features checked and cast on the device,
copied back while the next batch computes, and written in place by the background writer."""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..feature_store import MASK_PATHS_FILE, PATCH_GRIDS_FILE, PATHS_FILE, STATE_DIR, read_lines
from ..pause_points import pause_point
from ..preprocessing import Preprocess
from .loader import batch_loader
from .planning import mask_spec, rank_status_file, row_images, specs_from_manifest, target_rules
from .results import ExtractionError
from .writer import ArraySpec, BackgroundWriter, failure_record, FailureLog, OutputArrays, RowStatus

FLOAT16_MAX = 65504.0

#: Seconds to sleep after each batch (for crash-safety tests and demos; 0 / unset in normal use).
DELAY_ENV = "SAIL_VISION_EXTRACT_DELAY"


def describe_nonfinite(checkpoint, max_layer: int, compute_dtype: str) -> str:
    """Why the model produced NaN/inf: a damaged or overflowing weight (named), else the compute dtype."""
    from ..checkpoint import open_checkpoint

    found = open_checkpoint(checkpoint, max_layer=max_layer).find_nonfinite(max_layer=max_layer, dtype=compute_dtype)
    if found is not None:
        return found.describe()
    if compute_dtype in ("float32", "float64"):
        return (f"the model produced NaN/inf in {compute_dtype} from finite weights (every tensor it reads was "
                f"scanned); the checkpoint's values or config.json (rms_norm_eps, rope_theta) are unusual")
    return f"the model produced NaN/inf in {compute_dtype} from finite weights; try --dtype float32"


@dataclass
class CopyBack:
    """One batch's features on their way to the host: cast on the device, copied without waiting."""

    rows: np.ndarray
    features: dict  # name -> host tensor (pinned on CUDA), in the save dtype
    flags: object  # host bool tensor (features, 2): any NaN/inf, any value beyond float16's range
    patch_counts: list = None  # patches of each image: how a "rows" feature's block splits into images
    ready: object = None  # CUDA event recorded after the copies; None on the CPU
    masks: object = None  # the batch's label maps (segmentation sources), written with its features

    def per_image(self, spec: ArraySpec) -> np.ndarray | list[np.ndarray]:
        """The host values of ``spec``, one entry per image ((n_i, D) arrays for patch rows)."""
        values = self.features[spec.name].numpy()
        if spec.layout == "rows":
            return np.split(values, np.cumsum(self.patch_counts)[:-1])
        if spec.layout == "grid":
            return values.reshape(values.shape[0], *spec.shape[1:])
        return values


def start_copy_back(encoding, specs: Sequence[ArraySpec], save_dtype, rows) -> CopyBack:
    """Queue the checks, casts and device-to-host copies of one batch; nothing waits for the device."""
    import torch

    # Patch rows of images of different grids travel as one (sum of patches, D) block per feature.
    pooled = [encoding.patch_rows(spec.layer) if spec.layout == "rows" else encoding.pooled(spec.layer, spec.pool)
              for spec in specs]
    flags = torch.stack([torch.stack([(~torch.isfinite(v)).any(),
                                      (v.abs() > FLOAT16_MAX).any() if save_dtype == torch.float16
                                      else torch.zeros((), dtype=torch.bool, device=v.device)])
                         for v in pooled])
    on_cuda = flags.is_cuda

    def to_host(tensor):
        if not on_cuda:
            return tensor
        host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        return host.copy_(tensor, non_blocking=True)

    features = {spec.name: to_host(values.to(dtype=save_dtype)) for spec, values in zip(specs, pooled)}
    copy = CopyBack(rows, features, to_host(flags), patch_counts=[nh * nw for nh, nw in encoding.grids])
    if on_cuda:
        copy.ready = torch.cuda.Event()
        copy.ready.record()
    return copy


def finish_copy_back(copy: CopyBack, specs: Sequence[ArraySpec], paths,
                      nonfinite_hint: Callable[[], str]) -> dict[str, np.ndarray]:
    """Wait for one batch's copies, refuse values that cannot be stored, return the arrays to write.

    ``nonfinite_hint`` is called only when the model produced NaN/inf, to say why (it scans the weights).
    """
    if copy.ready is not None:
        copy.ready.synchronize()
    flags = copy.flags.numpy()
    if flags.any():
        first = int(np.flatnonzero(flags.any(1))[0])
        spec = specs[first]
        values = copy.per_image(spec)  # NaN stays NaN; a float16 overflow became inf
        bad = [not np.isfinite(np.asarray(v, dtype=np.float32)).all() for v in values]
        which = sorted(int(copy.rows[i]) for i in np.flatnonzero(bad))
        overflow = bool(flags[first, 1]) and not bool(flags[first, 0])
        hint = "values exceed float16's range; use --save-dtype float32" if overflow else nonfinite_hint()
        raise ExtractionError(f"layer {spec.layer} {spec.pool}: non-storable features for {paths[which[0]]} "
                              f"(rows {which[:5]}): {hint}")
    arrays = {spec.name: copy.per_image(spec) for spec in specs}
    if copy.masks is not None:
        arrays[MASKS_NAME] = copy.masks
    return arrays


def _row_views(manifest: dict) -> dict | None:
    """What the decoder needs to draw each row's view (``--views``): count, seed, the part's first row."""
    views = manifest.get("views")
    if not views:
        return None
    return {"count": int(views["count"]), "seed": int(views["seed"]),
            "first_row": int((manifest.get("part") or {}).get("first_row") or 0)}


#: The name the row writer knows ``masks.npy`` by.
MASKS_NAME = "masks"


def _batch_masks(masks: list | None, layout: str | None):
    """A batch's label maps as the writer takes them: stacked for the grid layout, else a list."""
    if masks is None:
        return None
    return np.stack(masks) if layout == "grid" else masks


def batch_features(encoding, specs: Sequence[ArraySpec], save_dtype, rows, paths,
                    nonfinite_hint: Callable[[], str]) -> dict[str, np.ndarray]:
    """The checked arrays of one batch, at once (the loop overlaps the two halves across batches)."""
    return finish_copy_back(start_copy_back(encoding, specs, save_dtype, rows), specs, paths, nonfinite_hint)


def encode_batches(out: Path, manifest: dict, batches, *, encoder, checkpoint, layers, norm, add_cls,
                   compute_dtype, device, preprocess: Preprocess, workers: int, strict: bool, progress: bool,
                   rank: int, commit_interval: float, bar=None) -> tuple[int, int]:
    """Encode these batches (at least one) of one folder with ``encoder`` and write them; returns
    (images processed, bytes written). ``checkpoint`` and ``compute_dtype`` name what to scan when
    the model produces NaN/inf. ``bar``: a progress bar shared by several calls (not closed here);
    else ``progress`` makes one."""
    import torch

    specs = specs_from_manifest(manifest)
    paths = read_lines(out / PATHS_FILE, manifest["num_items"])
    grids = np.load(out / PATCH_GRIDS_FILE)
    masks_entry = manifest.get("masks")
    mask_paths = None
    if masks_entry:
        spec = mask_spec(masks_entry, manifest["num_items"], preprocess.fixed_grid, preprocess.patch_size,
                         int(np.prod(grids.astype(np.int64), axis=1).sum()))
        specs_out = [*specs, spec]
        mask_paths = [m or None for m in read_lines(out / MASK_PATHS_FILE, manifest["num_items"])]
    else:
        specs_out = specs
    offsets = {s.name: np.load(out / s.offsets_file) for s in specs_out if s.offsets_file}
    mask_rules = target_rules(masks_entry)
    save_dtype = {"float16": torch.float16, "float32": torch.float32}[manifest["settings"]["save_dtype"]]
    total = int(sum(len(b) for b in batches))
    nonfinite_hint = functools.partial(describe_nonfinite, checkpoint, max(layers), compute_dtype)
    loader = batch_loader(paths, preprocess, grids, batches, workers=workers, pin_memory=device.type == "cuda",
                          images=row_images(out, paths), masks=mask_paths, mask_rules=mask_rules,
                          views=_row_views(manifest))
    iterator = iter(loader)  # starts the worker processes before the writer thread exists
    arrays = OutputArrays(out, specs_out, offsets)
    status = RowStatus(rank_status_file(out, rank))
    writer = BackgroundWriter(arrays, status, FailureLog(out / STATE_DIR / f"failures-rank{rank}.jsonl"),
                              commit_interval=commit_interval)
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    own_bar = bar is None and progress
    if own_bar:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="extracting", unit="img", dynamic_ncols=True, smoothing=0.05)
    processed = failed = 0
    in_flight = None  # the batch whose features are being copied back
    try:
        for item in iterator:
            records = [failure_record(row, paths[row], kind, detail) for row, kind, detail in item["failures"]]
            if records and strict:  # not recorded: the row stays pending, so --resume decodes it again
                if in_flight is not None:  # the batch before it is finished work: keep it
                    writer.put_batch(in_flight.rows, finish_copy_back(in_flight, specs, paths, nonfinite_hint))
                first = records[0]
                raise ExtractionError(f"{first['path']}: {first['reason']} (--strict stops at the first bad "
                                      f"input; rows finished so far are kept: fix the file and --resume, or "
                                      f"run without --strict)")
            writer.put_failures(records)
            rows = item["rows"].numpy()
            started = None
            if item["pixels"] is not None:
                pixels = item["pixels"]
                if isinstance(pixels, list):  # a packed batch of images of different sizes
                    patches = [preprocess.to_patches(p.to(device, non_blocking=True)[None])[0] for p in pixels]
                    planned_as_one = sum(p.shape[0] * p.shape[1] + 3 for p in patches)  # the plan packed it already
                    encoding = encoder.encode_patches(patches, layers, norm=norm, add_cls=add_cls, packed_output=True,
                                                      max_batch_tokens=planned_as_one)
                else:
                    encoding = encoder.encode_patches(preprocess.to_patches(pixels.to(device, non_blocking=True)),
                                                      layers, norm=norm, add_cls=add_cls)
                started = start_copy_back(encoding, specs, save_dtype, rows)
                started.masks = _batch_masks(item.get("masks"), masks_entry and masks_entry["layout"])
            # The previous batch is handed to the writer only now, after this one was queued on the
            # device: the GPU computes while the host waits for copies, checks and writes.
            if in_flight is not None:
                writer.put_batch(in_flight.rows, finish_copy_back(in_flight, specs, paths, nonfinite_hint))
                pause_point("extract:encoding")
            in_flight = started
            processed += len(rows) + len(records)
            failed += len(records)
            if bar is not None:
                bar.update(len(rows) + len(records))
                if failed:
                    bar.set_postfix(failed=failed, refresh=False)
            if delay:
                time.sleep(delay)
        if in_flight is not None:
            writer.put_batch(in_flight.rows, finish_copy_back(in_flight, specs, paths, nonfinite_hint))
            pause_point("extract:encoding")
    finally:
        if own_bar:
            bar.close()
        del iterator
        try:
            writer.close()
        finally:
            arrays.close()
            status.close()
    return processed, writer.bytes_written


# ---------------------------------------------------------------------------------- finishing
