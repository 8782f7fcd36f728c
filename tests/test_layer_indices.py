"""Layer index normalisation: one helper for every caller."""

import pytest

from sail_vision import LayerIndexError, resolve_layer_indices
from sail_vision.layer_indices import parse_layer_list


def test_negative_indices_count_from_the_end():
    assert resolve_layer_indices(-1, 32) == [32]
    assert resolve_layer_indices([8, -1, 0, -33], 32) == [8, 32, 0]
    assert resolve_layer_indices([16, -17], 32) == [16]  # duplicates collapse, order kept


@pytest.mark.parametrize("bad", [33, -34, [1, 40]])
def test_out_of_range_is_an_error(bad):
    with pytest.raises(LayerIndexError, match="out of range"):
        resolve_layer_indices(bad, 32)


def test_parse_layer_list():
    assert parse_layer_list("8,16,-1") == [8, 16, -1]
    assert parse_layer_list("8 16  -1") == [8, 16, -1]
    with pytest.raises(LayerIndexError, match="expected integers"):
        parse_layer_list("8,last")
