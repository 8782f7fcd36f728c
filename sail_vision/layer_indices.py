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


def block_output_layers(indices: int | Iterable[int] | None, num_layers: int, loaded: int | None = None) -> list[int]:
    """timm / DINOv2 block indices -> the hidden-state indices of those blocks' outputs, ascending.

    Block b (0-based, negative from the end of the model's ``num_layers`` blocks) outputs hidden
    state b + 1. ``indices``: an int n = the last n blocks (timm's ``feature_take_indices``,
    DINOv2's ``n``), a sequence = those blocks, None = every one of the ``loaded`` blocks (all by
    default). The result is in block order without repeats, as timm and DINOv2 return them.
    """
    loaded = num_layers if loaded is None else loaded
    if indices is None:
        indices = list(range(loaded))
    elif isinstance(indices, int) and not isinstance(indices, bool):
        if not 0 < indices <= num_layers:
            raise LayerIndexError(f"last-n {indices} is out of range for a model with {num_layers} blocks: "
                                  f"use 1..{num_layers}")
        indices = list(range(num_layers - indices, num_layers))
    items = [indices] if isinstance(indices, bool) else list(indices)
    for item in items:
        if isinstance(item, int) and not isinstance(item, bool) and not -num_layers <= item < num_layers:
            raise LayerIndexError(f"block index {item} is out of range for a model with {num_layers} blocks: "
                                  f"use 0..{num_layers - 1} or -{num_layers}..-1")
    as_layers = [item + 1 if isinstance(item, int) and not isinstance(item, bool) and item >= 0 else item
                 for item in items]
    return sorted(resolve_layer_indices(as_layers, num_layers))
