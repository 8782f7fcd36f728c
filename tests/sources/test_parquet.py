"""Parquet files as Hugging Face datasets writes them: columns, labels, class names and bad files."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest

from sail_vision.errors import InputError
from sail_vision.preprocessing import decode_image
from sail_vision.sources import resolve_inputs

from image_factory import hf_metadata, png_bytes, save_rgb, write_parquet


def test_bytes_paths_and_labels_with_class_names(tmp_path):
    save_rgb(tmp_path / "pics" / "x.png", 8, 6, seed=5)
    path = write_parquet(tmp_path / "d.parquet", [(png_bytes(1), "a.png"), (None, "pics/x.png"), (None, None)],
                         [2, 0, 1], ["cat", "dog", "zebra"], row_group_size=1)
    source = resolve_inputs(path)
    assert source.classes == ["cat", "dog", "zebra"] and source.description["columns"] == {"image": "image",
                                                                                              "label": "label"}
    records = list(source.records())
    assert [(r.key, r.label) for r in records] == [("d#0", 2), (os.path.realpath(tmp_path / "pics" / "x.png"), 0),
                                                   ("d#2", 1)]  # a path row is named by the file it reads
    assert records[0].data == png_bytes(1) and records[0].path is None
    assert records[1].path == str(tmp_path / "pics" / "x.png") and records[1].data is None  # from the file's folder
    assert records[2].error == ("no-image", "image holds neither bytes nor a path")
    assert source.count(source.shards[0]) == 3


def test_without_metadata_an_image_column_and_integer_labels_still_work(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", [(png_bytes(), None)] * 2, [1, 0], metadata=False, image_column="img")
    source = resolve_inputs(path)
    assert source.classes is None and [r.label for r in source.records()] == [1, 0]
    assert source.description["labels"]["why"] == "the label column has no ClassLabel names"


@pytest.mark.parametrize("label, kind, detail", [
    (None, "no-label", "null label in a labelled file"),
    (-1, "bad-label", "label -1 is negative (Hugging Face writes -1 for unlabelled rows"),
    (3, "bad-label", "not one of the 3 classes"),
])
def test_bad_labels_become_error_records(tmp_path, label, kind, detail):
    path = write_parquet(tmp_path / "d.parquet", [(png_bytes(), None)] * 3, [0, label, 2], ["a", "b", "c"])
    records = list(resolve_inputs(path).records())
    assert records[0].error is None and records[2].error is None
    assert records[1].error[0] == kind and detail in records[1].error[1]


def test_several_class_label_columns_leave_the_rows_unlabelled_and_say_why(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    features = {"img": {"_type": "Image"}, "fine_label": {"names": ["a", "b"], "_type": "ClassLabel"},
                "coarse_label": {"names": ["x"], "_type": "ClassLabel"}}
    table = pa.table({"img": [{"bytes": png_bytes(), "path": None}], "fine_label": [1], "coarse_label": [0]})
    pq.write_table(table.replace_schema_metadata(hf_metadata(features)), tmp_path / "c.parquet")
    source = resolve_inputs(tmp_path / "c.parquet")
    assert source.classes is None and [r.label for r in source.records()] == [None]
    assert source.description["labels"]["why"] == "several ClassLabel columns (fine_label, coarse_label), none " \
                                                  "named label"


def test_unusable_files_are_one_line_errors_naming_them(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["a"], "label": [0]}), tmp_path / "text.parquet")
    with pytest.raises(InputError, match="text.parquet: no image column \\(columns: text, label\\)"):
        resolve_inputs(tmp_path / "text.parquet")
    (tmp_path / "fake.parquet").write_text("not parquet")
    with pytest.raises(InputError, match="fake.parquet: not a readable Parquet file"):
        resolve_inputs(tmp_path / "fake.parquet")
    with pytest.raises(InputError, match="must be local paths"):
        resolve_inputs("pipe:cat x.parquet")


def test_files_with_different_label_sets_cannot_be_mixed(tmp_path):
    write_parquet(tmp_path / "a.parquet", [(png_bytes(), None)], [0], ["cat", "dog"])
    write_parquet(tmp_path / "b.parquet", [(png_bytes(), None)], [0], ["cat", "zebra"])
    write_parquet(tmp_path / "c.parquet", [(png_bytes(), None)], None)
    with pytest.raises(InputError, match="b.parquet: its class names differ from .*a.parquet's"):
        resolve_inputs(f"{tmp_path}/{{a,b}}.parquet")
    with pytest.raises(InputError, match="c.parquet: its label column differs"):
        resolve_inputs(f"{tmp_path}/{{a,c}}.parquet")


def test_rows_stream_in_batches_with_bounded_memory(tmp_path):
    from sail_vision.sources import parquet

    images = [(png_bytes(i % 5), None) for i in range(3 * parquet.BATCH_ROWS + 5)]
    path = write_parquet(tmp_path / "big.parquet", images, [i % 2 for i in range(len(images))], ["a", "b"],
                         row_group_size=50)
    records = resolve_inputs(path).records()
    first = next(records)
    assert first.key == "big#0" and first.data == png_bytes(0)
    rest = list(records)
    assert len(rest) == len(images) - 1 and rest[-1].key == f"big#{len(images) - 1}"
    last = png_bytes((len(images) - 1) % 5)
    np.testing.assert_array_equal(np.asarray(decode_image(rest[-1].data)), np.asarray(decode_image(last)))
