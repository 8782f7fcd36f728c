"""What an extraction reports: :class:`ExtractionResult` (and :class:`ExtractionError`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SailVisionError
from ..feature_store import LABELS_FILE, describe_bytes, parted_files
from ..sources.labels import labels_summary


class ExtractionError(SailVisionError):
    """An extraction cannot start, continue, or finish as asked."""


@dataclass
class ExtractionResult:
    """What an :func:`extract` call produced (the same on every rank)."""

    out: Path
    num_items: int
    num_valid: int
    num_failed: int
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    images_processed: int = 0
    output_bytes: int = 0
    already_complete: bool = False
    world_size: int = 1
    labels: str = ""  # one line: labelled rows and classes found, or why there are none
    parts_total: int = 0
    parts_waiting: int = 0  # parts other tasks still have to finish (the dataset is not joined yet)

    @property
    def finished(self) -> bool:
        return self.parts_waiting == 0

    @property
    def images_per_second(self) -> float:
        return self.images_processed / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """One line: images, failures, time, speed, bytes on disk."""
        labels = f"\n{self.labels}" if self.labels else ""
        if not self.finished:
            return (f"{self.out}: this task processed {self.images_processed} images in {self.seconds:.1f} s; "
                    f"{self.parts_total - self.parts_waiting} of {self.parts_total} parts are finished, "
                    f"{self.parts_waiting} still to do by the other tasks (the last task to finish joins them, "
                    f"or run the same command with --finalize)")
        if self.already_complete:
            return (f"{self.out}: already complete ({self.num_items} images, {self.num_failed} failed); "
                    f"nothing to do{labels}")
        ranks = f" on {self.world_size} processes" if self.world_size > 1 else ""
        return (f"extracted {self.num_items} images ({self.num_valid} ok, {self.num_failed} failed) in "
                f"{self.seconds:.1f} s{ranks} ({self.images_per_second:.1f} images/s this run), "
                f"{describe_bytes(self.output_bytes)} of features in {self.out}{labels}")


# ---------------------------------------------------------------------------------- planning


def label_summary_of(out: Path, manifest: dict) -> str:
    """The labels line of a finished extraction; rows a sharded source counts only as it reads them
    are counted in ``labels.npy`` (rows with a label >= 0) and the manifest's ``num_items``."""
    info = (manifest.get("inputs") or {}).get("labels")
    if info and info.get("from") and info.get("labelled") is None and (out / LABELS_FILE).is_file():
        return labels_summary(info, labelled=int((np.load(out / LABELS_FILE) >= 0).sum()),
                              rows=manifest["num_items"])
    return labels_summary(info)


def output_bytes(out: Path, manifest: dict) -> int:
    return sum(f.stat().st_size for info in manifest["features"].values()
               for f in parted_files(out, manifest, info["file"]) or [out / info["file"]])


# ---------------------------------------------------------------------------------- parts


def result_from_manifest(out: Path, manifest: dict, **extra) -> ExtractionResult:
    return ExtractionResult(out, manifest["num_items"], manifest["num_valid"], manifest["num_failed"],
                            manifest["failures"].get("items", []), output_bytes=output_bytes(out, manifest),
                            labels=label_summary_of(out, manifest), **extra)


# ---------------------------------------------------------------------------------- API
