"""Cosine k-NN with temperature-weighted votes (the DINOv2 protocol), computed in chunks on ``--device``.

Queries and the training bank are L2-normalised. The queries are held on the chosen device and the
bank streams past them once, chunk by chunk, keeping a running top-kmax of cosine similarities per
query, so each bank row is read and uploaded once per evaluation (ImageNet-1k's 1.28 M rows once,
not once per query chunk) and neither the full similarity matrix nor the whole bank is in memory at
once. Each neighbour votes for its class with weight ``exp(similarity / T)``. ``k`` larger than the
bank is refused.
"""

from __future__ import annotations

import hashlib
from typing import ClassVar, Mapping, Sequence

import numpy as np
import torch

from .data import ProbeData
from .defaults import DEFAULT_CHUNK_ROWS, DEFAULT_KS, DEFAULT_TEMPERATURE
from .errors import ProbeDataError
from .inputs import FeatureInput
from .methods import ClassificationMethod, record, register_method
from .metrics import TopkCounter
from .streaming import stream_chunks

#: Queries compared with the bank at once (the similarity block is QUERY_CHUNK_ROWS x chunk_rows).
QUERY_CHUNK_ROWS = 2048
#: Normalised queries (float32) and their running top-k held on the device while the bank streams past.
HELD_QUERY_BYTES = 2 << 30
#: A k-NN bank up to this size is copied into head.safetensors; larger ones are reloaded from their folder.
MAX_SAVED_BANK_BYTES = 2 << 30


def grid_point_name(feature: str, k: int, temperature: float) -> str:
    return f"knn_{feature}_k{k}_T{temperature:.3g}"


def check_ks(ks: Sequence, temperature: float) -> list[int]:
    """The neighbour counts as ints; refuses an empty list, non-integers and values below 1."""
    if not len(ks):
        raise ProbeDataError("--ks: the grid is empty; give at least one neighbour count")
    if any(float(k) != int(float(k)) or int(float(k)) < 1 for k in ks):
        raise ProbeDataError(f"--ks must be whole numbers >= 1, got {list(ks)}")
    if not (temperature > 0 and np.isfinite(temperature)):
        raise ProbeDataError(f"--temperature must be a positive number, got {temperature}")
    return [int(float(k)) for k in ks]


def check_bank(ks: Sequence[int], bank_rows: np.ndarray) -> None:
    """Refuses a neighbour count larger than the bank (the vote would silently use fewer neighbours)."""
    too_many = [k for k in ks if k > bank_rows.size]
    if too_many:
        raise ProbeDataError(f"--ks {max(too_many)}: more neighbours than the k-NN bank has rows ({bank_rows.size}); "
                             f"use --ks of at most {bank_rows.size} or more training rows")


def nearest_neighbours(bank: ProbeData, bank_rows: np.ndarray, queries: ProbeData, query_rows: np.ndarray | None,
                       feature_input: FeatureInput, k: int, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                       device: str | torch.device = "cpu",
                       held_query_bytes: int = HELD_QUERY_BYTES) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, bank labels) of the ``k`` nearest bank rows of every query row, best first (on the CPU).

    The bank is read once: the (normalised) queries and their running top-k are held on the device, up
    to ``held_query_bytes`` at a time, and each bank chunk is compared with all of them as it arrives.
    More queries than that take one more pass over the bank per ``held_query_bytes`` of queries.
    """
    names = list(feature_input.parts)
    device = torch.device(device)
    check_bank([k], bank_rows)
    bank_labels = torch.from_numpy(bank.labels).to(device)
    query_rows = np.arange(queries.num_rows) if query_rows is None else np.asarray(query_rows)
    block = min(chunk_rows, QUERY_CHUNK_ROWS)  # queries compared with a bank chunk at once
    per_query = 4 * bank.dim(feature_input) + 12 * k  # its float32 features and its running top-k
    per_pass = max(1, held_query_bytes // (per_query * block)) * block
    sims_out, labels_out = [], []
    for start in range(0, query_rows.size, per_pass):
        held = [torch.nn.functional.normalize(feature_input.concat(chunk.features), dim=1)
                for chunk in stream_chunks(queries, names, query_rows[start:start + per_pass], device=device,
                                           chunk_rows=block, labels=False)]
        best = [(torch.full((q.shape[0], 0), -2.0, device=device),
                 torch.zeros((q.shape[0], 0), dtype=torch.long, device=device)) for q in held]
        for chunk in stream_chunks(bank, names, bank_rows, device=device, chunk_rows=chunk_rows, labels=False):
            rows = torch.from_numpy(chunk.rows).to(device)
            keys = torch.nn.functional.normalize(feature_input.concat(chunk.features), dim=1)
            for i, query in enumerate(held):
                sims = query @ keys.t()
                top = sims.topk(min(k, sims.shape[1]), dim=1)
                best_sims = torch.cat([best[i][0], top.values], dim=1)
                best_rows = torch.cat([best[i][1], rows[top.indices]], dim=1)
                keep = best_sims.topk(min(k, best_sims.shape[1]), dim=1)
                best[i] = keep.values, best_rows.gather(1, keep.indices)
        for best_sims, best_rows in best:
            sims_out.append(best_sims.cpu())
            labels_out.append(bank_labels[best_rows].cpu())
    if not sims_out:
        return torch.zeros((0, k)), torch.zeros((0, k), dtype=torch.long)
    return torch.cat(sims_out), torch.cat(labels_out)


def vote(similarities: torch.Tensor, neighbour_labels: torch.Tensor, k: int, num_classes: int,
         temperature: float) -> torch.Tensor:
    """(N, C) class scores from the first ``k`` neighbours, each weighted by exp(sim / T)."""
    k = min(k, similarities.shape[1])
    weights = torch.exp(similarities[:, :k] / temperature)
    scores = torch.zeros(similarities.shape[0], num_classes, dtype=weights.dtype)
    return scores.scatter_add_(1, neighbour_labels[:, :k], weights)


def evaluate_knn(bank: ProbeData, bank_rows: np.ndarray, queries: ProbeData, query_rows: np.ndarray | None,
                 feature_input: FeatureInput, ks: Sequence[int], num_classes: int,
                 temperature: float = DEFAULT_TEMPERATURE, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 device: str | torch.device = "cpu") -> dict[int, dict[str, float]]:
    """{k: {"top1": ..., "top5": ...}} in percent for the query rows against the bank rows."""
    ks = check_ks(ks, temperature)
    check_bank(ks, bank_rows)
    sims, labels = nearest_neighbours(bank, bank_rows, queries, query_rows, feature_input, max(ks), chunk_rows,
                                      device)
    truth = torch.from_numpy(queries.labels if query_rows is None else queries.labels[query_rows])
    results = {}
    for k in ks:
        counter = TopkCounter()
        counter.add(vote(sims, labels, k, num_classes, temperature), truth)
        results[k] = counter.percent()
    return results


def _labels_digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()[:16]


class KnnHead:
    """The chosen k-NN: a bank (training rows and labels), ``k`` and the vote temperature."""

    def __init__(self, feature_input: FeatureInput, bank: ProbeData, bank_rows: np.ndarray, k: int,
                 temperature: float, num_classes: int, *, device: str = "cpu", chunk_rows: int = DEFAULT_CHUNK_ROWS,
                 reference: Mapping | None = None):
        self.feature_input = feature_input
        self.bank, self.bank_rows = bank, np.asarray(bank_rows)
        self.k, self.temperature, self.num_classes = int(k), float(temperature), int(num_classes)
        self.device, self.chunk_rows = device, chunk_rows
        self.reference = dict(reference) if reference else None

    def scores(self, data: ProbeData, rows: np.ndarray | None = None) -> np.ndarray:
        sims, labels = nearest_neighbours(self.bank, self.bank_rows, data, rows, self.feature_input, self.k,
                                          self.chunk_rows, self.device)
        return vote(sims, labels, self.k, self.num_classes, self.temperature).numpy()

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, np.float64)
        return (scores / np.maximum(scores.sum(1, keepdims=True), 1e-300)).astype(np.float32)

    def _bank_bytes(self) -> int:
        return int(self.bank_rows.size) * self.bank.dim(self.feature_input) * 4

    def tensors(self) -> dict[str, np.ndarray]:
        if self._bank_bytes() > MAX_SAVED_BANK_BYTES:
            return {}
        return {"bank": self.bank.gather(self.feature_input, self.bank_rows),
                "bank_labels": self.bank.labels[self.bank_rows].astype(np.int64)}

    def meta(self) -> dict:
        labels = self.bank.labels[self.bank_rows]
        if self._bank_bytes() <= MAX_SAVED_BANK_BYTES:
            bank = {"saved": True}
        elif self.reference and self.bank_rows.size == self.bank.num_rows:
            bank = {"saved": False, **self.reference}
        else:
            raise ProbeDataError(f"the k-NN bank of {self.feature_input.name!r} ({self._bank_bytes() >> 20} MiB) is "
                                 f"too large to save and cannot be reloaded from a feature folder "
                                 f"(plain arrays, in-memory labels or --no-refit); probe a `sail-vision extract` "
                                 f"folder with its own, --label-pattern or .npy labels, without --no-refit")
        return {"bank": {**bank, "rows": int(self.bank_rows.size), "labels_sha256": _labels_digest(labels)},
                "bank_rows": int(self.bank_rows.size)}

    @classmethod
    def from_saved(cls, meta: Mapping, tensors: Mapping[str, np.ndarray], *, device: str = "cpu",
                   bank: ProbeData | None = None) -> "KnnHead":
        from .data import load_feature_dir

        feature_input = FeatureInput(tuple(meta["parts"]))
        info = meta.get("bank") or {}
        if "bank" in tensors:
            edges = np.cumsum([0] + list(meta["part_dims"]))
            parts = {p: tensors["bank"][:, edges[i]:edges[i + 1]] for i, p in enumerate(feature_input.parts)}
            bank = ProbeData(parts, np.asarray(tensors["bank_labels"], np.int64), "<saved k-NN bank>")
        elif bank is None:
            if not info.get("feature_dir"):
                raise ProbeDataError("this k-NN head has no saved bank and no feature folder to reload it from")
            bank = load_feature_dir(info["feature_dir"], feature_input.parts, labels=info.get("labels"),
                                    label_pattern=info.get("label_pattern"), classes=info.get("classes"))
        if bank.labels is None or bank.num_rows != info.get("rows", bank.num_rows) or \
                ("labels_sha256" in info and _labels_digest(bank.labels) != info["labels_sha256"]):
            raise ProbeDataError(f"{bank.source}: the k-NN bank no longer matches the one this head was trained with "
                                 f"({bank.num_rows} rows now, {info.get('rows')} then, or different labels)")
        hp = meta["hyperparameters"]
        return cls(feature_input, bank, np.arange(bank.num_rows), int(hp["k"]), float(hp["temperature"]),
                   int(meta["num_classes"]), device=device)


@register_method
class KnnMethod(ClassificationMethod):
    """Cosine k-NN over ``ks`` (DINOv2-style); the bank is every training row given to ``refit``."""

    name: ClassVar[str] = "knn"
    summary: ClassVar[str] = "cosine k-NN with temperature-weighted votes over --ks"
    hyperparameters: ClassVar[tuple[str, ...]] = ("k",)

    def __init__(self, ks: Sequence = DEFAULT_KS, temperature: float = DEFAULT_TEMPERATURE, *,
                 chunk_rows: int = DEFAULT_CHUNK_ROWS, device: str = "cpu", bank_reference: Mapping | None = None):
        self.ks = list(ks)
        self.temperature = float(temperature)
        self.chunk_rows = chunk_rows
        self.device = device
        self.bank_reference = bank_reference

    def check(self) -> None:
        self.ks = check_ks(self.ks, self.temperature)

    def grid_size(self, inputs: Sequence[FeatureInput]) -> int:
        return len(inputs) * len(self.ks)

    def fit_grid(self, train: ProbeData, inputs: Sequence[FeatureInput], num_classes: int, fit_rows: np.ndarray,
                 held_rows: np.ndarray | None, *, progress: bool = True) -> list[dict]:
        records = []
        for feature_input in inputs:
            scores = {}
            if held_rows is not None:
                scores = evaluate_knn(train, fit_rows, train, held_rows, feature_input, self.ks, num_classes,
                                      self.temperature, self.chunk_rows, self.device)
            for k in self.ks:
                records.append(record(grid_point_name(feature_input.name, k, self.temperature), self.name,
                                      feature_input, scores.get(k), self.metrics, k=k, temperature=self.temperature))
        return records

    def refit(self, train: ProbeData, chosen: Mapping, num_classes: int, rows: np.ndarray, *,
              progress: bool = True) -> KnnHead:
        return KnnHead(FeatureInput(tuple(chosen["parts"])), train, rows, int(chosen["k"]), self.temperature,
                       num_classes, device=self.device, chunk_rows=self.chunk_rows,
                       reference=self.bank_reference or train.reload)

    def settings(self) -> dict:
        return {"temperature": self.temperature, "device": str(self.device)}

    @classmethod
    def load_head(cls, meta: Mapping, tensors: Mapping[str, np.ndarray], *, device: str = "cpu",
                  bank: ProbeData | None = None) -> KnnHead:
        return KnnHead.from_saved(meta, tensors, device=device, bank=bank)
