"""One place that turns user layer indices into hidden-state indices 0..L (timm style)."""

from __future__ import annotations

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
