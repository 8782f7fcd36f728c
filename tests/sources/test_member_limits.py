"""Bounded reads of WebDataset shards: members other than images and labels are skipped unread,
an image member over 4 x Image.MAX_IMAGE_PIXELS bytes (a label member over 16 MiB) is a too-large
record, never read; the same for .tar, .tar.gz and pipe: shards."""

from __future__ import annotations

import gzip
import io
import tarfile

import pytest
from PIL import Image

from sail_vision.sources import resolve_inputs
from sail_vision.sources import webdataset
from sail_vision.sources.shards import max_image_bytes

from image_factory import png_bytes


def _shard(tmp_path, kind: str, members: list[tuple[str, bytes]]) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path = tmp_path / ("s.tar.gz" if kind == "tar.gz" else "s.tar")
    path.write_bytes(gzip.compress(buffer.getvalue()) if kind == "tar.gz" else buffer.getvalue())
    return f"pipe:cat {path}" if kind == "pipe" else str(path)


@pytest.fixture
def extracted(monkeypatch):
    """The names of the members the source read."""
    names = []
    real = tarfile.TarFile.extractfile

    def spy(self, member):
        names.append(member.name)
        return real(self, member)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", spy)
    return names


def test_the_byte_limit_follows_pillows_guard(monkeypatch):
    assert max_image_bytes() == 4 * 89_478_485
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    assert max_image_bytes() == 4000
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the guard switched off: its default still bounds reads
    assert max_image_bytes() == 4 * 89_478_485


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "pipe"])
def test_members_that_are_not_images_or_labels_are_skipped_unread(tmp_path, kind, extracted):
    image = png_bytes(1)
    spec = _shard(tmp_path, kind, [("a.png", image), ("a.txt", b"x" * 200_000), ("a.cls", b"1"),
                                   ("a.npy", b"\0" * 5000), ("b.txt", b"text only"), ("c.PNG", image),
                                   ("c.mp4", b"\0" * 3000)])
    records = list(resolve_inputs(spec).records())
    assert [(r.key.split("#")[1], r.error[0] if r.error else None) for r in records] == [
        ("a", None), ("b", "no-label"), ("c", "no-label")]
    assert records[0].data == image and records[0].label == 1
    assert set(extracted) <= {"a.png", "a.cls", "c.PNG"} and "a.txt" not in extracted


@pytest.mark.parametrize("kind", ["tar", "tar.gz", "pipe"])
def test_an_image_member_over_the_limit_is_too_large_and_not_read(tmp_path, kind, extracted, monkeypatch):
    small, big = png_bytes(1, 8, 6), png_bytes(2, 64, 64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", (len(small) + len(big)) // 8)  # limit between the two
    assert len(small) < max_image_bytes() < len(big)
    spec = _shard(tmp_path, kind, [("a.png", small), ("b.jpg", big), ("c.png", small)])
    records = list(resolve_inputs(spec).records())
    assert [r.error[0] if r.error else None for r in records] == [None, "too-large", None]
    assert f"{len(big):,} bytes" in records[1].error[1] and "Image.MAX_IMAGE_PIXELS" in records[1].error[1]
    assert "b.jpg" not in extracted and [r.data for r in records[::2]] == [small, small]


def test_a_label_member_over_its_limit_is_too_large(tmp_path, extracted, monkeypatch):
    monkeypatch.setattr(webdataset, "MAX_LABEL_BYTES", 10)
    spec = _shard(tmp_path, "tar", [("a.png", png_bytes()), ("a.cls", b"0"), ("b.png", png_bytes()),
                                    ("b.cls", b"0" * 11), ("c.png", png_bytes()), ("c.json", b"{}" * 20)])
    records = list(resolve_inputs(spec).records())
    assert [r.error[0] if r.error else None for r in records] == [None, "too-large", "too-large"]
    assert "b.cls" not in extracted and "c.json" not in extracted


def test_parquet_image_bytes_over_the_limit_are_too_large(tmp_path, monkeypatch):
    from image_factory import write_parquet

    small, big = png_bytes(1, 8, 6), png_bytes(2, 64, 64)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", (len(small) + len(big)) // 8)
    path = write_parquet(tmp_path / "d.parquet", [(small, None), (big, None)], [0, 1], ["a", "b"])
    records = list(resolve_inputs(path).records())
    assert [(r.error[0] if r.error else None, r.label) for r in records] == [(None, 0), ("too-large", 1)]
    assert records[1].data is None
