"""WebDataset shards: members, labels, class names, damaged and unopenable shards, pipe: commands."""

from __future__ import annotations

import gzip
import io
import json
import tarfile

import numpy as np
import pytest

from sail_vision.errors import InputError
from sail_vision.preprocessing import decode_image
from sail_vision.sources import resolve_inputs

from image_factory import png_bytes, write_tar


def _errors(source):
    return [(r.key, r.error[0] if r.error else None) for r in source.records()]


def test_labels_from_cls_or_json_and_images_by_preference(tmp_path):
    tar = write_tar(tmp_path / "s.tar", [
        {"__key__": "a", "jpg": png_bytes(1), "png": png_bytes(2), "cls": 1},  # jpg is preferred
        {"__key__": "b", "webp": png_bytes(3), "json": {"label": 0, "caption": "x"}},
        {"__key__": "c", "jpeg": png_bytes(4), "json": json.dumps({"cls": 2}).encode()},
    ])
    records = list(resolve_inputs(str(tar)).records())
    assert [(r.key, r.label) for r in records] == [("s#a", 1), ("s#b", 0), ("s#c", 2)]
    np.testing.assert_array_equal(np.asarray(decode_image(records[0].image)), np.asarray(decode_image(png_bytes(1))))


@pytest.mark.parametrize("sample, kind, detail", [
    ({"png": png_bytes(), "cls": b"three"}, "bad-label", "cls member 'three' is not an integer"),
    ({"png": png_bytes(), "cls": -2}, "bad-label", "label -2 is negative"),
    ({"png": png_bytes(), "cls": 7}, "bad-label", "not one of the 3 classes"),
    ({"png": png_bytes(), "cls": 10**9}, "bad-label", "not one of the 3 classes"),
    ({"png": png_bytes(), "json": b"{not json"}, "bad-label", "json member is not JSON"),
    ({"png": png_bytes(), "json": {"label": "dog"}}, "bad-label", "json label: label 'dog' is not an integer"),
    ({"png": png_bytes(), "txt": "a caption"}, "no-label", "while the source is labelled"),
    ({"txt": "only text", "cls": 1}, "no-image", "no jpg/jpeg/png/webp member (members: cls, txt)"),
])
def test_bad_samples_become_error_records(tmp_path, sample, kind, detail):
    write_tar(tmp_path / "s.tar", [{"__key__": "good", "png": png_bytes(), "cls": 0}, {"__key__": "bad", **sample},
                                   {"__key__": "after", "png": png_bytes(), "cls": 2}])
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    records = list(resolve_inputs(str(tmp_path / "s.tar")).records())
    assert [r.key for r in records] == ["s#good", "s#bad", "s#after"]
    assert records[0].error is None and records[2].error is None and records[2].label == 2
    assert records[1].error[0] == kind and detail in records[1].error[1]


def test_repeated_members_and_keys_are_errors(tmp_path):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ("a.png", "a.cls", "a.png", "b.png", "b.cls", "a.png", "a.cls"):
            data = png_bytes() if name.endswith("png") else b"1"
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    (tmp_path / "s.tar").write_bytes(buffer.getvalue())
    records = list(resolve_inputs(str(tmp_path / "s.tar")).records())
    assert [(r.key, r.error and r.error[0]) for r in records] == [("s#a", "corrupt"), ("s#b", None),
                                                                  ("s#a", "duplicate")]


def _shard(tmp_path, samples=4):
    return write_tar(tmp_path / "full.tar", [{"__key__": f"k{i}", "png": png_bytes(i), "cls": i % 2}
                                             for i in range(samples)])


@pytest.mark.parametrize("where", ["in member data", "at a member boundary", "in a header",
                                   "before the end marker"])
def test_a_cut_off_shard_ends_with_a_truncated_record(tmp_path, where):
    full = _shard(tmp_path).read_bytes()
    members = tarfile.open(tmp_path / "full.tar").getmembers()
    png2 = members[5]  # k2.png (k0.cls, k0.png, k1.cls, k1.png, k2.cls, k2.png, ...)
    cut = {"in member data": png2.offset_data + 100, "at a member boundary": png2.offset,
           "in a header": png2.offset + 200,
           "before the end marker": members[-1].offset_data + (-(-members[-1].size // 512)) * 512}[where]
    (tmp_path / "cut.tar").write_bytes(full[:cut])
    got = _errors(resolve_inputs(str(tmp_path / "cut.tar")))
    if where == "before the end marker":
        assert got == [("cut#k0", None), ("cut#k1", None), ("cut#k2", None), ("cut#k3", "truncated")]
    else:
        assert got == [("cut#k0", None), ("cut#k1", None), ("cut#k2", "truncated")]


def test_one_end_block_is_enough_and_data_after_the_end_is_reported(tmp_path):
    full = _shard(tmp_path).read_bytes()
    last = tarfile.open(tmp_path / "full.tar").getmembers()[-1]
    end = last.offset_data + (-(-last.size // 512)) * 512
    (tmp_path / "one.tar").write_bytes(full[:end + 512])
    assert [e for _, e in _errors(resolve_inputs(str(tmp_path / "one.tar")))] == [None] * 4
    (tmp_path / "twice.tar").write_bytes(full + full)
    got = list(resolve_inputs(str(tmp_path / "twice.tar")).records())
    assert [r.error[0] if r.error else None for r in got] == [None] * 4 + ["corrupt"]
    assert "concatenated tar files" in got[-1].error[1]


def test_compressed_shards_and_pipe_commands(tmp_path):
    full = _shard(tmp_path).read_bytes()
    (tmp_path / "z.tar.gz").write_bytes(gzip.compress(full))
    assert [e for _, e in _errors(resolve_inputs(str(tmp_path / "z.tar.gz")))] == [None] * 4
    piped = resolve_inputs(f"pipe:cat {tmp_path / 'full.tar'}")
    assert [s.name for s in piped.shards] == ["full"]
    assert _errors(piped) == [(f"full#k{i}", None) for i in range(4)]
    cut = gzip.compress(full)
    (tmp_path / "cut.tar.gz").write_bytes(cut[: len(cut) * 3 // 4])
    assert _errors(resolve_inputs(str(tmp_path / "cut.tar.gz")))[-1][1] == "truncated"


@pytest.mark.parametrize("spec, message", [
    ("{tmp}/absent-{{0..1}}.tar", "shard .*absent-0.tar: no such file"),
    ("{tmp}/empty.tar", "empty.tar: not a readable tar file \\(empty file\\)"),
    ("{tmp}/text.tar", "text.tar: not a readable tar file"),
    ("pipe:cat {tmp}/absent.tar", "pipe:cat .*: not a readable tar file \\(the command exited with status 1\\)"),
    ("pipe:exit 3", "pipe:exit 3: .*the command exited with status 3"),
])
def test_a_shard_that_cannot_be_opened_is_a_one_line_error_naming_it(tmp_path, spec, message):
    (tmp_path / "empty.tar").write_bytes(b"")
    (tmp_path / "text.tar").write_text("not a tar file " * 100)
    with pytest.raises(InputError, match=message) as info:
        list(resolve_inputs(spec.format(tmp=tmp_path)).records())
    assert "\n" not in str(info.value)


def test_a_later_shard_that_cannot_be_opened_names_itself(tmp_path):
    write_tar(tmp_path / "a.tar", [{"__key__": "x", "png": png_bytes(), "cls": 0}])
    (tmp_path / "b.tar").write_text("not a tar file " * 100)
    source = resolve_inputs(f"{tmp_path}/{{a,b}}.tar")
    assert len(list(source.records(source.shards[0]))) == 1
    with pytest.raises(InputError, match="b.tar: not a readable tar file"):
        list(source.records(source.shards[1]))


def test_labelled_and_unlabelled_shards_cannot_be_mixed(tmp_path):
    write_tar(tmp_path / "a.tar", [{"__key__": "x", "png": png_bytes()}])
    write_tar(tmp_path / "b.tar", [{"__key__": "y", "png": png_bytes(), "cls": 1}])
    source = resolve_inputs(f"{tmp_path}/{{a,b}}.tar")
    assert source.classes is None and source.description["labels"]["from"] is None
    with pytest.raises(InputError, match="b.tar: sample b#y has a label but the first sample of this source has none"):
        list(source.records())


def test_class_names_must_agree_across_shard_folders(tmp_path):
    for folder, classes in (("one", "cat\ndog\n"), ("two", "cat\nzebra\n")):
        write_tar(tmp_path / folder / "s.tar", [{"__key__": "x", "png": png_bytes(), "cls": 1}])
        (tmp_path / folder / "classes.txt").write_text(classes)
    spec = f"{tmp_path}/{{one,two}}/s.tar"
    with pytest.raises(InputError, match="two/classes.txt: names other classes than .*one/classes.txt"):
        resolve_inputs(spec)
    (tmp_path / "two" / "classes.txt").unlink()
    with pytest.raises(InputError, match="two: has no classes.txt while .* names the classes"):
        resolve_inputs(spec)
    (tmp_path / "two" / "classes.txt").write_text("cat\ndog\n")
    source = resolve_inputs(spec)
    assert source.classes == ["cat", "dog"] and [s.name for s in source.shards] == ["0-s", "1-s"]
    assert source.description["labels"]["names_from"] == str(tmp_path / "one" / "classes.txt")


def test_a_missing_library_is_a_one_line_error(tmp_path, monkeypatch):
    import sys

    write_tar(tmp_path / "a.tar", [{"__key__": "x", "png": png_bytes()}])
    monkeypatch.setitem(sys.modules, "webdataset", None)  # as if it were not installed
    with pytest.raises(InputError, match="reading WebDataset shards needs the 'webdataset' library: pip install "
                                         "'sail-vision\\[shards\\]'"):
        resolve_inputs(str(tmp_path / "a.tar"))
