"""Loaders for user files: text classification from CSV or JSONL.

Each file is checked as it is read: the text and label columns must exist, every row must have a
non-empty text and a label; the error names the file, the line and what to fix.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from nnforge.data._types import TextClassification, TextSplit
from nnforge.errors import DataError, not_utf8

__all__ = ["load_text_file", "text_classification_from_files"]


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    try:
        return _read_rows(path)
    except UnicodeDecodeError as exc:
        raise DataError(f"{not_utf8(path, exc)}; save the file as UTF-8") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None


def _read_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a byte-order mark
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise DataError(f"{path}: the CSV file is empty (expected a header row)")
            return [(i + 2, row) for i, row in enumerate(reader)]
    if suffix in (".jsonl", ".ndjson"):
        out = []
        with open(path, encoding="utf-8-sig") as f:
            for i, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{i}: each line must be a JSON object")
                out.append((i, obj))
        return out
    raise DataError(f"{path}: unsupported file type {suffix!r}; use .csv or .jsonl")


def load_text_file(path: str | os.PathLike[str], text_column: str = "text", label_column: str = "label",
                   label_names: list[str] | None = None) -> tuple[TextSplit, list[str]]:
    """Read one CSV/JSONL file of labelled texts.

    Labels may be names (mapped to ids in ``label_names`` order, or sorted order when not given) or
    integers. Returns the split and the label names.
    """
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: no such file")
    rows = _rows(p)
    if not rows:
        raise DataError(f"{p}: no rows")
    for col in (text_column, label_column):
        if col not in rows[0][1]:
            raise DataError(f"{p}: no column {col!r}; the columns are {sorted(rows[0][1])}. "
                            f"Set text_column/label_column to the right names.")
    raw_labels = []
    texts = []
    for line, row in rows:
        text, label = row.get(text_column), row.get(label_column)
        if text is None or (isinstance(text, str) and not text.strip()):
            raise DataError(f"{p}:{line}: empty or missing {text_column!r}")
        if not isinstance(text, str):
            raise DataError(f"{p}:{line}: {text_column!r} must be a string; got {type(text).__name__}")
        if label is None or label == "":
            raise DataError(f"{p}:{line}: empty or missing {label_column!r}")
        if not isinstance(label, str | int) or isinstance(label, bool):
            raise DataError(f"{p}:{line}: {label_column!r} must be a name or an integer; got {type(label).__name__}")
        texts.append(text)
        raw_labels.append(str(label))
    distinct = set(raw_labels)
    numeric = all(x.lstrip("-").isdecimal() for x in distinct)  # integer labels: 2 before 10
    names = label_names or sorted(distinct, key=int if numeric else None)
    index = {n: i for i, n in enumerate(names)}
    unknown = sorted(set(raw_labels) - set(index))
    if unknown:
        raise DataError(f"{p}: labels {unknown[:5]} are not among the label names {names}")
    return TextSplit(texts, [index[x] for x in raw_labels]), names


def text_classification_from_files(files: dict[str, str], text_column: str = "text",
                                   label_column: str = "label") -> TextClassification:
    """A dataset from one file per split, e.g. ``{"train": "a.csv", "test": "b.csv"}``."""
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str | os.PathLike)
                                              for k, v in files.items()):
        raise DataError(f"files must map split names to paths, e.g. {{train: train.csv, test: test.csv}}; got {files!r}")
    if "train" not in files:
        raise DataError(f"user data needs at least a 'train' file; got the splits {sorted(files)}")
    train, names = load_text_file(files["train"], text_column, label_column)
    if len(names) < 2:
        raise DataError(f"{files['train']}: the training file has one class ({names}); a classifier needs at "
                        "least two")
    splits = {"train": train}
    for key, f in files.items():
        if key != "train":
            splits[key], _ = load_text_file(f, text_column, label_column, label_names=names)
    return TextClassification("files", names, splits, source={"files": {k: str(v) for k, v in files.items()}})
