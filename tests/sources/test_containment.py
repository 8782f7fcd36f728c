"""Contained paths: a Parquet row whose image is a file path reads it only from inside the Parquet
file's folder (links followed) or a folder the user allows; else the row is an outside-dataset failure.
The row is named by the real path it read."""

from __future__ import annotations

import os

import pytest

from sail_vision.errors import InputError
from sail_vision.sources import resolve_inputs

from image_factory import save_rgb, write_parquet


@pytest.fixture
def layout(tmp_path):
    """data/ holds the Parquet file and pics/in.png; secret/s.png lies beside data/."""
    save_rgb(tmp_path / "data" / "pics" / "in.png", 8, 8)
    save_rgb(tmp_path / "secret" / "s.png", 8, 8)
    os.symlink(tmp_path / "secret", tmp_path / "data" / "link-out")
    os.symlink(tmp_path / "data" / "pics", tmp_path / "data" / "link-in")
    return tmp_path


OUTSIDE = ["/etc/passwd", "/proc/self/environ", "../secret/s.png", "pics/../../secret/s.png", "link-out/s.png",
           "{tmp}/secret/s.png", "../data2/x.png", "/"]


def _rows(tmp_path, names, **kwargs):
    path = write_parquet(tmp_path / "data" / "d.parquet", [(None, n.format(tmp=tmp_path)) for n in names], None)
    return list(resolve_inputs(path, **kwargs).records())


@pytest.mark.parametrize("name", OUTSIDE)
def test_paths_leading_outside_the_dataset_are_failures(layout, name):
    (record,) = _rows(layout, [name])
    assert record.error[0] == "outside-dataset" and record.path is None and record.data is None
    assert record.key == "d#0" and "--allow-paths-under" in record.error[1]


@pytest.mark.parametrize("name, real", [("pics/in.png", "data/pics/in.png"), ("./pics/../pics/in.png",
                                                                               "data/pics/in.png"),
                                        ("link-in/in.png", "data/pics/in.png"), ("{tmp}/data/pics/in.png",
                                                                                 "data/pics/in.png")])
def test_paths_inside_the_dataset_are_read_and_recorded_by_their_real_path(layout, name, real):
    (record,) = _rows(layout, [name])
    expected = os.path.realpath(layout / real)
    assert record.error is None and record.path == expected and record.key == expected


def test_an_allowed_root_admits_its_files_only(layout, monkeypatch):
    monkeypatch.setenv("HOME", str(layout))
    rows = _rows(layout, ["../secret/s.png", "link-out/s.png", "/etc/passwd"], allow_paths_under=["~/secret"])
    assert [r.error[0] if r.error else r.path for r in rows] == [
        os.path.realpath(layout / "secret" / "s.png")] * 2 + ["outside-dataset"]


def test_allow_paths_under_names_a_folder_and_applies_to_parquet_only(layout, tmp_path):
    with pytest.raises(InputError, match="--allow-paths-under .*absent: no such folder"):
        _rows(layout, ["pics/in.png"], allow_paths_under=[str(tmp_path / "absent")])
    with pytest.raises(InputError, match="only Parquet rows"):
        resolve_inputs(layout / "data" / "pics", allow_paths_under=[str(layout)])


def test_list_files_keep_naming_any_file(layout):
    """The documented contract: a list file (written by its user) names files anywhere."""
    listed = layout / "data" / "list.txt"
    listed.write_text(f"{layout / 'secret' / 's.png'}\n../secret/s.png\n")
    source = resolve_inputs(listed)
    assert source.paths == [str(layout / "secret" / "s.png")] * 2 and not source.errors
