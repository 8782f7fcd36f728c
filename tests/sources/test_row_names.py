"""Every row has exactly one path line: a name (folder file, list line, tar member key, Parquet
path, mask) that cannot be one UTF-8 line of paths.txt becomes a ``bad-name`` failure of its row,
shown escaped, and never shifts the rows after it."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from sail_vision.sources import ImageSource, Record, resolve_inputs

from image_factory import png_bytes, save_rgb, write_parquet

#: Every separator str.splitlines honours, NUL, and an undecodable byte (a lone surrogate).
BAD = ["\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x00", "\udcff"]


def _one_line_each(names) -> None:
    text = "".join(n + "\n" for n in names)
    assert text.encode("utf-8").decode("utf-8").splitlines() == list(names)


def _tar(path, names):
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            data = png_bytes(len(name))
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("char", BAD, ids=[repr(c) for c in BAD])
def test_a_record_key_that_cannot_be_one_line_is_a_bad_name_failure(char):
    record = Record(key=f"shard#a{char}b", label=3, data=b"png")
    assert record.error[0] == "bad-name" and record.data is None and record.label is None
    assert record.key == "shard#a" + "".join(repr(c)[1:-1] for c in char) + "b"
    _one_line_each([record.key])


@pytest.mark.parametrize("char", BAD, ids=[repr(c) for c in BAD])
def test_an_image_source_path_or_mask_that_cannot_be_one_line_fails_its_row_only(char):
    source = ImageSource(["/d/a.png", f"/d/b{char}.png", "/d/c.png"], masks=["/m/a.png", "/m/b.png", f"/m/c{char}.png"])
    _one_line_each(source.paths)
    _one_line_each([m or "" for m in source.masks])
    assert sorted(source.errors) == [1, 2] and {e[0] for e in source.errors.values()} == {"bad-name"}
    assert source.paths[0] == "/d/a.png" and source.paths[2] == "/d/c.png" and source.masks[2] is None


@pytest.mark.parametrize("char", ["\n", "\r", "\x0b", "\x1e", "\x85", "\u2028"], ids=repr)
@pytest.mark.parametrize("kind", ["tar", "tar.gz", "pipe"])
def test_webdataset_keys_with_line_breaks_keep_one_row_per_line(tmp_path, char, kind):
    names = [f"k{i}{char if i == 1 else ''}.png" for i in range(4)] + ["k\x0cx.png"]
    tar = _tar(tmp_path / "s.tar", names)
    if kind == "tar.gz":
        import gzip

        (tmp_path / "s.tar.gz").write_bytes(gzip.compress(tar.read_bytes()))
        spec = str(tmp_path / "s.tar.gz")
    else:
        spec = str(tar) if kind == "tar" else f"pipe:cat {tar}"
    records = list(resolve_inputs(spec).records())
    assert len(records) == 5
    _one_line_each([r.key for r in records])
    assert [r.error[0] if r.error else None for r in records] == [None, "bad-name", None, None, "bad-name"]


def test_a_folder_file_with_a_newline_is_a_failure_not_a_refusal(tmp_path):
    for name in ("a.png", "b\nc.png", "d.png"):
        save_rgb(tmp_path / "f" / name, 8, 8)
    source = resolve_inputs(tmp_path / "f", layout="folder")
    assert len(source.paths) == 3 and list(source.errors) == [1]
    assert source.paths[1].endswith("b\\nc.png")
    _one_line_each(source.paths)


def test_a_parquet_path_with_a_line_break_is_a_failure(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", [(None, "x\u2028.png"), (png_bytes(), None)], None)
    records = list(resolve_inputs(path).records())
    assert [r.error[0] if r.error else None for r in records] == ["bad-name", None]
    _one_line_each([r.key for r in records])
    assert os.sep in records[0].key  # named by the path it would have read
