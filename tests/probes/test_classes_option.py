"""``--classes`` on labels that already have names: the error lists the names that differ."""

from __future__ import annotations

import numpy as np
import pytest

from sail_vision.feature_store import write_feature_dir
from sail_vision.probes.data import ProbeDataError, load_feature_dir


@pytest.fixture
def folder(tmp_path):
    x = np.zeros((6, 3), np.float32)
    return write_feature_dir(tmp_path / "f", {"layer-1_mean": x}, np.arange(6) % 3, ["cat", "dog", "zebra"]).path


@pytest.mark.parametrize("given, differs", [
    (["cat", "dog"], "missing 'zebra'"),
    (["cat", "dog", "zebra", "yak"], "extra 'yak'"),
    (["cat", "dgo", "zebra"], "missing 'dog'; extra 'dgo'"),
    (["zebra", "dog", "cat"], "the same names in another order (label 0 is 'cat', --classes says 'zebra')"),
    ([f"c{i}" for i in range(9)], "missing 'cat', 'dog', 'zebra'; extra 'c0', 'c1', 'c2', 'c3', 'c4' and 4 more"),
])
def test_classes_that_differ_from_the_stored_names_are_listed(folder, given, differs):
    with pytest.raises(ProbeDataError) as info:
        load_feature_dir(folder, classes=given)
    message = str(info.value)
    assert f"--classes differs from the class names of {folder} (from {folder / 'manifest.json'}): {differs}; " in message
    assert "\n" not in message


def test_the_same_names_are_accepted(folder):
    assert load_feature_dir(folder, classes=["cat", "dog", "zebra"]).classes == ["cat", "dog", "zebra"]


def test_a_classes_file_under_home(tmp_path, monkeypatch):
    from sail_vision.probes.labels import read_classes_file

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "names.txt").write_text("cat\ndog\n")
    assert read_classes_file("~/names.txt") == ["cat", "dog"]
