"""One place that turns user layer indices into hidden-state indices 0..L (timm style)."""

from __future__ import annotations

import operator
from typing import Iterable

from .errors import LayerIndexError


def resolve_layer_indices(layers: int | Iterable[int], num_layers: int) -> list[int]:
    """Normalise layer indices to 0..num_layers, in the order given, without duplicates.

    Indices mean what transformers' ``output_hidden_states`` means: 0 is the input embedding,
    k (1..L-1) the output of block k, L the final-norm output of block L. Negative indices count
    from the end (-1 = L). Anything outside [-(L+1), L] is an error, never silently dropped.
    """
    if isinstance(layers, bool):
        raise LayerIndexError(f"layer index must be an int, got {layers!r}")
    items = [layers] if isinstance(layers, int) else list(layers)
    if not items:
        raise LayerIndexError("no layer requested; pass at least one index (e.g. -1 for the last)")
    resolved: list[int] = []
    for item in items:
        try:
            index = int(item)
        except (TypeError, ValueError):
            raise LayerIndexError(f"layer index {item!r} is not an integer") from None
        if isinstance(item, bool) or index != item:
            raise LayerIndexError(f"layer index {item!r} is not an integer")
        if not -(num_layers + 1) <= index <= num_layers:
            raise LayerIndexError(
                f"layer index {index} is out of range for a model with {num_layers} blocks: "
                f"use 0..{num_layers} or -{num_layers + 1}..-1")
        index = index % (num_layers + 1)
        if index not in resolved:
            resolved.append(index)
    return resolved


def parse_layer_list(text: str) -> list[int]:
    """Parse a CLI layer list such as '-1', '8,16,-1' or '8 16 -1'."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        return [int(p) for p in parts]
    except ValueError:
        raise LayerIndexError(f"layer list {text!r}: expected integers such as '8,16,-1'") from None


def block_output_layers(indices: int | Iterable[int] | None, num_layers: int, loaded: int | None = None) -> list[int]:
    """timm / DINOv2 block indices -> the hidden-state indices of those blocks' outputs, ascending.

    Block b (0-based, negative from the end of the model's ``num_layers`` blocks) outputs hidden
    state b + 1. ``indices``: an int n = the last n blocks (timm's ``feature_take_indices``,
    DINOv2's ``n``), a sequence = those blocks, None = every one of the ``loaded`` blocks (all by
    default). The result is in block order without repeats, as timm and DINOv2 return them.
    """
    loaded = num_layers if loaded is None else loaded
    if indices is None:
        blocks = list(range(loaded))
    elif _as_int(indices) is not None:
        n = _as_int(indices)
        if not 0 < n <= num_layers:
            raise LayerIndexError(f"last-n {n} is out of range for a model with {num_layers} blocks: "
                                  f"use 1..{num_layers}")
        blocks = list(range(num_layers - n, num_layers))
    else:
        try:
            items = list(indices)
        except TypeError:
            raise LayerIndexError(f"block indices {indices!r}: give an int (the last n blocks) or a list of "
                                  f"block indices") from None
        blocks = []
        for item in items:
            b = _as_int(item)
            if b is None:
                raise LayerIndexError(f"block index {item!r} is not an integer")
            if not -num_layers <= b < num_layers:
                raise LayerIndexError(f"block index {b} is out of range for a model with {num_layers} blocks: "
                                      f"use 0..{num_layers - 1} or -{num_layers}..-1")
            blocks.append(b)
    # block b >= 0 is hidden state b + 1; block -k is the k-th from the end, hidden state -k as well
    return sorted(resolve_layer_indices([b + 1 if b >= 0 else b for b in blocks], num_layers))


def _as_int(value) -> int | None:
    """``value`` as an int if it is an integer (Python, numpy or a 0-d integer tensor), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None
