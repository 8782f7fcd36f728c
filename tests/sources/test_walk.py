"""Folder walking: every real folder once, link rules, and problems recorded instead of dropped."""

from __future__ import annotations

import os

import pytest

from sail_vision.errors import InputError
from sail_vision.sources import resolve_inputs
from sail_vision.sources.files import is_image_name
from sail_vision.sources.walk import walk_files

from image_factory import save_rgb


def _rel(root, listing):
    return [(os.path.relpath(f.path, root), f.error[0] if f.error else None) for f in listing.found]


def test_files_come_in_relative_path_component_order(tmp_path):
    for rel in ["m.png", "m/e.png", "a.jpg", "z/deeper/d.webp", "b.png", ".hidden/x.png", "m/.x.png"]:
        save_rgb(tmp_path / rel, 8, 8)
    (tmp_path / "notes.txt").write_text("not an image")
    assert _rel(tmp_path, walk_files(tmp_path, is_image_name)) == [
        ("a.jpg", None), ("b.png", None), ("m/e.png", None), ("m.png", None), ("z/deeper/d.webp", None)]


def test_a_symlink_loop_cannot_multiply_rows(tmp_path):
    save_rgb(tmp_path / "a" / "1.png", 8, 8)
    save_rgb(tmp_path / "a" / "b" / "2.png", 8, 8)
    os.symlink(tmp_path / "a", tmp_path / "a" / "b" / "back")  # a/b/back -> a: a loop
    os.symlink(tmp_path, tmp_path / "a" / "root")  # a/root -> the root itself
    listing = walk_files(tmp_path, is_image_name)
    assert _rel(tmp_path, listing) == [("a/1.png", None), ("a/b/2.png", None)]
    assert sorted(os.path.relpath(p, tmp_path) for p in listing.repeated_folders) == ["a/b/back", "a/root"]
    source = resolve_inputs(tmp_path, layout="folder")
    assert len(source) == 2 and source.description["walk"]["repeated_folders_skipped"] == 2


def test_two_links_to_one_folder_list_it_once_at_its_first_place(tmp_path):
    save_rgb(tmp_path / "shared" / "x.png", 8, 8)
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(tmp_path / "shared", root / "b_link")
    os.symlink(tmp_path / "shared", root / "a_link")
    assert _rel(root, walk_files(root, is_image_name)) == [("a_link/x.png", None)]


def test_a_linked_file_and_its_target_are_two_rows(tmp_path):
    save_rgb(tmp_path / "a.png", 8, 8)
    os.symlink(tmp_path / "a.png", tmp_path / "b.png")
    os.link(tmp_path / "a.png", tmp_path / "c.png")
    assert _rel(tmp_path, walk_files(tmp_path, is_image_name)) == [("a.png", None), ("b.png", None), ("c.png", None)]


def test_broken_links_and_non_regular_files_are_recorded(tmp_path):
    save_rgb(tmp_path / "good.png", 8, 8)
    os.symlink(tmp_path / "gone.png", tmp_path / "broken.png")
    os.symlink(tmp_path / "gone.txt", tmp_path / "broken.txt")  # not an image name: not listed
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it would block forever
    assert _rel(tmp_path, walk_files(tmp_path, is_image_name)) == [
        ("broken.png", "missing"), ("good.png", None), ("pipe.jpg", "not-image")]
    records = list(resolve_inputs(tmp_path).records())
    assert [r.error[0] if r.error else None for r in records] == ["missing", None, "not-image"]
    assert "broken symbolic link" in records[0].error[1]


def _deny(monkeypatch, denied):
    """os.scandir raises PermissionError on ``denied`` (chmod cannot deny root, who runs CI)."""
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(denied):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)


def test_an_unreadable_folder_becomes_an_unreadable_row(tmp_path, monkeypatch):
    for rel in ["a/1.png", "b/2.png", "b/3.png", "c/4.png"]:
        save_rgb(tmp_path / rel, 8, 8)
    _deny(monkeypatch, tmp_path / "b")
    assert _rel(tmp_path, walk_files(tmp_path, is_image_name)) == [("a/1.png", None), ("b", "unreadable"),
                                                                    ("c/4.png", None)]
    for layout in ("auto", "folder", "imagenet"):
        source = resolve_inputs(tmp_path, layout=layout)
        records = list(source.records())
        assert [r.error for r in records][1] == ("unreadable", "cannot list folder (Permission denied)"), layout
        assert records[1].label is None
    assert resolve_inputs(tmp_path).classes == ["a", "b", "c"]  # the unreadable folder is still a class


def test_an_unreadable_root_is_a_one_line_error(tmp_path, monkeypatch):
    save_rgb(tmp_path / "x.png", 8, 8)
    _deny(monkeypatch, tmp_path)
    with pytest.raises(InputError, match="cannot list this folder \\(Permission denied\\)"):
        walk_files(tmp_path, is_image_name)
    with pytest.raises(InputError, match="cannot list this folder"):
        resolve_inputs(tmp_path, layout="folder")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file; the monkeypatched test above covers it")
def test_an_unreadable_folder_for_real(tmp_path):
    save_rgb(tmp_path / "a" / "1.png", 8, 8)
    save_rgb(tmp_path / "b" / "2.png", 8, 8)
    (tmp_path / "b").chmod(0)
    try:
        records = list(resolve_inputs(tmp_path, layout="folder").records())
        assert [r.error[0] if r.error else None for r in records] == [None, "unreadable"]
    finally:
        (tmp_path / "b").chmod(0o755)
