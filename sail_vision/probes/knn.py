"""Cosine k-NN with temperature-weighted votes (the DINOv2 protocol), computed in chunks.

Queries and the training bank are L2-normalised; for each chunk of queries the bank is scanned
chunk by chunk keeping a running top-kmax of cosine similarities, so neither the full similarity
matrix nor the whole bank has to be in memory at once. Each neighbour votes for its class with
weight ``exp(similarity / T)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .data import DEFAULT_CHUNK_ROWS, FeatureInput, ProbeData, ProbeDataError, ordered_chunks
from .metrics import accuracy_percent, topk_correct

from .defaults import DEFAULT_KS, DEFAULT_TEMPERATURE  # noqa: F401 - re-exported
#: Queries compared with the bank at once (the similarity block is QUERY_CHUNK_ROWS x chunk_rows).
QUERY_CHUNK_ROWS = 2048


def grid_point_name(feature: str, k: int, temperature: float) -> str:
    return f"knn_{feature}_k{k}_T{temperature:.3g}"


def _normalised(block: np.ndarray) -> torch.Tensor:
    return torch.nn.functional.normalize(torch.from_numpy(np.ascontiguousarray(block, np.float32)), dim=1)


def _input_block(arrays: dict[str, np.ndarray], feature_input: FeatureInput) -> np.ndarray:
    parts = [arrays[p] for p in feature_input.parts]
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)


def nearest_neighbours(bank: ProbeData, bank_rows: np.ndarray, queries: ProbeData, query_rows: np.ndarray | None,
                       feature_input: FeatureInput, k: int, chunk_rows: int = DEFAULT_CHUNK_ROWS
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """(similarities, bank labels) of the ``k`` nearest bank rows of every query row, best first."""
    names = list(feature_input.parts)
    k = min(k, bank_rows.size)
    bank_blocks = None
    if bank_rows.size <= chunk_rows:  # small bank: keep it normalised in memory
        bank_blocks = [(bank_rows, _normalised(_input_block(bank.read(names, bank_rows), feature_input)))]
    sims_out, labels_out = [], []
    for _, arrays in ordered_chunks(queries, names, query_rows, min(chunk_rows, QUERY_CHUNK_ROWS)):
        query = _normalised(_input_block(arrays, feature_input))
        best_sims = torch.full((query.shape[0], 0), -2.0)
        best_rows = torch.zeros((query.shape[0], 0), dtype=torch.long)
        blocks = bank_blocks or ((rows, _normalised(_input_block(a, feature_input)))
                                 for rows, a in ordered_chunks(bank, names, bank_rows, chunk_rows))
        for rows, keys in blocks:
            sims = query @ keys.t()
            top = sims.topk(min(k, sims.shape[1]), dim=1)
            best_sims = torch.cat([best_sims, top.values], dim=1)
            best_rows = torch.cat([best_rows, torch.from_numpy(rows)[top.indices]], dim=1)
            keep = best_sims.topk(min(k, best_sims.shape[1]), dim=1)
            best_sims, best_rows = keep.values, best_rows.gather(1, keep.indices)
        sims_out.append(best_sims)
        labels_out.append(torch.from_numpy(bank.labels)[best_rows])
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
                 temperature: float = DEFAULT_TEMPERATURE, chunk_rows: int = DEFAULT_CHUNK_ROWS
                 ) -> dict[int, tuple[float, float]]:
    """{k: (top1, top5)} in percent for the query rows against the bank rows."""
    if any(int(k) < 1 for k in ks):
        raise ProbeDataError(f"--ks must be positive integers, got {list(ks)}")
    if not temperature > 0:
        raise ProbeDataError(f"--temperature must be positive, got {temperature}")
    sims, labels = nearest_neighbours(bank, bank_rows, queries, query_rows, feature_input, max(ks), chunk_rows)
    truth = torch.from_numpy(queries.labels if query_rows is None else queries.labels[query_rows])
    results = {}
    for k in ks:
        hits = topk_correct(vote(sims, labels, int(k), num_classes, temperature), truth)
        results[int(k)] = (accuracy_percent(hits[1], truth.numel()), accuracy_percent(hits[5], truth.numel()))
    return results


def predict_knn(bank: ProbeData, feature_input: FeatureInput, queries: ProbeData, k: int, num_classes: int,
                temperature: float = DEFAULT_TEMPERATURE, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> torch.Tensor:
    """(N, C) vote scores of every query row against the whole bank."""
    sims, labels = nearest_neighbours(bank, np.arange(bank.num_rows), queries, None, feature_input, k, chunk_rows)
    return vote(sims, labels, k, num_classes, temperature)
