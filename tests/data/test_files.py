from __future__ import annotations

import pytest

from nnforge import data
from nnforge.errors import DataError


def test_csv_and_jsonl_load_with_label_names(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\nhello there,pos\nawful day,neg\nnice,pos\n")
    (tmp_path / "test.jsonl").write_text('{"text": "great", "label": "pos"}\n\n{"text": "bad", "label": "neg"}\n')
    ds = data.load("files", files={"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.jsonl")})
    assert ds.label_names == ["neg", "pos"]
    assert ds.split("train").labels == [1, 0, 1]
    assert ds.split("test").texts == ["great", "bad"]


def test_missing_label_column_names_the_columns(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("sentence,label\nhi,1\n")
    with pytest.raises(DataError, match=r"no column 'text'; the columns are \['label', 'sentence'\]"):
        data.load_text_file(f)


def test_bad_jsonl_line_is_named(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_text('{"text": "ok", "label": 1}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"a.jsonl:2: not valid JSON"):
        data.load_text_file(f)


def test_empty_text_and_unknown_label(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("text,label\n,pos\n")
    with pytest.raises(DataError, match=r"a.csv:2: empty or missing 'text'"):
        data.load_text_file(f)
    g = tmp_path / "b.csv"
    g.write_text("text,label\nhi,maybe\n")
    with pytest.raises(DataError, match="not among the label names"):
        data.load_text_file(g, label_names=["neg", "pos"])


def test_unsupported_suffix(tmp_path):
    f = tmp_path / "a.parquet"
    f.write_text("x")
    with pytest.raises(DataError, match="unsupported file type"):
        data.load_text_file(f)
