from __future__ import annotations

import pytest

from nnforge import data
from nnforge.data.files import load_text_file, text_classification_from_files
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


@pytest.mark.parametrize(("name", "content", "message"), [
    ("latin1.csv", b"text,label\nna\xefve,comedy\n", "latin1.csv:2: not UTF-8 text"),
    ("num.jsonl", b'{"text": 5, "label": "a"}\n', "num.jsonl:1: 'text' must be a string; got int"),
    ("list.jsonl", b'{"text": "x", "label": ["a"]}\n', "'label' must be a name or an integer; got list"),
    ("bool.jsonl", b'{"text": "x", "label": true}\n', "got bool"),
])
def test_wrong_encodings_and_types_are_named_with_the_line(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_text_file(tmp_path / name)


def test_spreadsheet_bom_integer_labels_and_one_class(tmp_path):
    f = tmp_path / "excel.csv"
    f.write_bytes("\ufefftext,label\nx,10\ny,2\nz,1\n".encode())  # Excel's "CSV UTF-8" starts with a BOM
    split, names = load_text_file(f)
    assert names == ["1", "2", "10"] and split.labels == [2, 1, 0]  # integers in numeric order
    (tmp_path / "one.csv").write_text("text,label\nx,a\ny,a\n")
    with pytest.raises(DataError, match="one class"):
        text_classification_from_files({"train": str(tmp_path / "one.csv")})


def test_files_option_must_be_a_mapping_of_splits(tmp_path):
    with pytest.raises(DataError, match="files must map split names to paths"):
        data.load("files", files="train.csv")
    with pytest.raises(DataError, match=r"at least a 'train' file; got the splits \['test'\]"):
        data.load("files", files={"test": "t.csv"})


def test_labels_that_look_numeric_but_are_not_decimal_sort_as_names(tmp_path):
    f = tmp_path / "a.csv"
    f.write_text("text,label\nx,\u00b2\ny,1\n", encoding="utf-8")  # '²'.isdigit() is True, int('²') fails
    split, names = data.load_text_file(f)
    assert names == ["1", "\u00b2"] and split.labels == [1, 0]
