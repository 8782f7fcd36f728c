"""What a family of probe heads reads: one stored feature, or several concatenated along D.

A *feature input* is named by its parts joined with ``+`` (``layer-29_end+layer-32_end+layer-32_mean``).
This module owns choosing inputs from stored feature names (explicit names, ``fnmatch`` globs such as
``layer-*_mean``, every layer of one pool, DINOv2's last-N concatenation) and the one helper that
concatenates the parts of an input, for numpy arrays and torch tensors alike.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from .errors import ProbeDataError

_GLOB_CHARS = "*?["


@dataclass(frozen=True)
class FeatureInput:
    """What one family of heads reads: a stored feature, or several concatenated along D."""

    parts: tuple[str, ...]

    @property
    def name(self) -> str:
        return "+".join(self.parts)

    @property
    def layer(self) -> tuple[int, str] | None:
        """(layer, pool) when this input is one stored ``layer-{k}_{pool}`` feature, else None."""
        if len(self.parts) != 1:
            return None
        layer, pool = parse_feature_name(self.parts[0])
        return None if layer is None else (layer, pool)

    def concat(self, arrays: Mapping, rows=None):
        """The (rows, D) matrix (or (rows, P, D) tokens) of this input: its parts taken from ``arrays`` (numpy
        arrays or torch tensors, name -> (N, D_part) or (N, P, D_part)), optionally indexed by ``rows``,
        concatenated along the last axis, D, in order.
        A single part is returned without a copy when ``rows`` is None."""
        first = arrays[self.parts[0]]
        if isinstance(first, np.ndarray):
            blocks = [arrays[p] if rows is None else arrays[p][rows] for p in self.parts]
            return blocks[0] if len(blocks) == 1 else np.concatenate(blocks, axis=-1)
        import torch

        if rows is not None and not isinstance(rows, torch.Tensor):
            rows = torch.as_tensor(np.asarray(rows), device=first.device)
        # index_select: the same rows as x[rows], several times faster on the CPU
        blocks = [arrays[p] if rows is None else arrays[p].index_select(0, rows) for p in self.parts]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=-1)


def parse_feature_name(name: str) -> tuple[int | None, str | None]:
    """``layer-12_mean`` -> (12, 'mean'); other names -> (None, None) (the store's naming rule)."""
    from ..feature_store import parse_feature_name as parse

    return parse(name)


def parse_feature_inputs(specs: Sequence[str], available: Sequence[str] | None = None) -> list[FeatureInput]:
    """``['layer-4_mean', 'layer-3_end+layer-4_end', 'layer-*_end']`` -> feature inputs, duplicates removed.

    A spec holding ``*``, ``?`` or ``[`` is a glob matched against ``available`` (the stored feature
    names), each match becoming its own input, sorted by layer then name; globs inside a ``+``
    concatenation are refused (the order of the parts would be ambiguous).
    """
    inputs: list[FeatureInput] = []

    def add(feature_input: FeatureInput) -> None:
        if feature_input not in inputs:
            inputs.append(feature_input)

    for spec in specs:
        for item in str(spec).split(","):
            if not item.strip():
                continue
            parts = tuple(p.strip() for p in item.split("+") if p.strip())
            if not parts:
                raise ProbeDataError(f"--features {spec!r}: empty feature name")
            if any(c in part for part in parts for c in _GLOB_CHARS):
                if len(parts) > 1:
                    raise ProbeDataError(f"--features {item!r}: a glob cannot be part of a '+' concatenation; "
                                         f"name the parts explicitly")
                for name in match_features(parts[0], available):
                    add(FeatureInput((name,)))
                continue
            if len(set(parts)) != len(parts):
                raise ProbeDataError(f"--features {item!r}: a feature appears twice in one concatenation")
            add(FeatureInput(parts))
    if not inputs:
        raise ProbeDataError("no feature inputs given; pass --features NAME [NAME+NAME ...]")
    return inputs


def _layer_order(name: str) -> tuple:
    layer, pool = parse_feature_name(name)
    return (pool or "", layer if layer is not None else -1, name)


def match_features(pattern: str, available: Sequence[str] | None) -> list[str]:
    """Stored feature names matching the glob ``pattern``, ordered by pool then layer depth."""
    if available is None:
        raise ProbeDataError(f"--features {pattern!r}: a glob needs a feature folder to match against")
    found = sorted((n for n in available if fnmatch.fnmatchcase(n, pattern)), key=_layer_order)
    if not found:
        raise ProbeDataError(f"--features {pattern!r} matches no stored feature; available: "
                             f"{', '.join(available) or 'none'}")
    return found


def all_layer_inputs(available: Sequence[str], pool: str) -> list[FeatureInput]:
    """One input per stored layer of ``pool`` (``--all-layers POOL``), shallowest first."""
    names = [n for n in available if parse_feature_name(n)[1] == pool]
    if not names:
        pools = sorted({p for p in (parse_feature_name(n)[1] for n in available) if p})
        raise ProbeDataError(f"--all-layers {pool}: no stored layer-K_{pool} feature; pools found: "
                             f"{', '.join(pools) or 'none'}")
    return [FeatureInput((n,)) for n in sorted(names, key=_layer_order)]


def concat_last_layers(available: Sequence[str], n: int, token: str = "end") -> FeatureInput:
    """DINOv2's input: the ``token`` feature of the last ``n`` layers plus the mean of the last layer's
    patch tokens, built from the stored feature names (``layer-{k}_{pool}``)."""
    if n < 1:
        raise ProbeDataError(f"--concat-last must be at least 1, got {n}")
    layers = sorted({layer for layer, pool in map(parse_feature_name, available) if pool == token})
    if len(layers) < n:
        raise ProbeDataError(f"--concat-last {n}: only {len(layers)} layers have a {token!r} feature "
                             f"({', '.join(map(str, layers)) or 'none'}); extract more layers with --pool {token}")
    chosen = layers[-n:]
    mean = f"layer-{chosen[-1]}_mean"
    if mean not in available:
        raise ProbeDataError(f"--concat-last {n}: no feature {mean!r} (the last layer's mean of patch tokens); "
                             f"extract it with --pool mean")
    return FeatureInput(tuple(f"layer-{k}_{token}" for k in chosen) + (mean,))


def stored_parts(inputs: Sequence[FeatureInput]) -> list[str]:
    """Every stored feature the inputs read, each once, sorted."""
    return sorted({p for fi in inputs for p in fi.parts})
