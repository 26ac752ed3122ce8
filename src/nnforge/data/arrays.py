"""Your own array data as a dataset: NumPy ``.npz`` files (arrays ``x`` and ``y``) or CSV tables, one file per split.

In a recipe::

    data:
      dataset: arrays
      options:
        files: {train: train.npz, test: test.npz}   # or .csv: a header row, a label column, numeric features
        label_column: label                         # CSV only
        input_shape: [1, 8, 8]                      # optional: reshape each row (e.g. images stored flat)

Labels are class indices (0…C-1) or, in a CSV, class names (sorted, so that every split numbers them alike);
``label_names`` names the classes explicitly. Every problem (a missing file or column, a non-number, rows of
different lengths, a single class in training) is a :class:`~nnforge.errors.DataError` naming the file.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from nnforge.data._types import ArrayClassification
from nnforge.errors import DataError, not_utf8

__all__ = ["array_classification_from_files"]


def _npz(path: Path) -> tuple[np.ndarray, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in ("x", "y") if k not in f.files]
            if missing:
                raise DataError(f"{path}: an .npz split holds arrays 'x' and 'y'; it has {sorted(f.files)}")
            return np.asarray(f["x"]), np.asarray(f["y"])
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None


def _csv(path: Path, label_column: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError as exc:
        raise DataError(not_utf8(path, exc)) from None
    if len(rows) < 2:
        raise DataError(f"{path}: a CSV split needs a header row and at least one data row")
    header, body = rows[0], [r for r in rows[1:] if r]
    if label_column not in header:
        raise DataError(f"{path}: no column {label_column!r}; the columns are {header} (set label_column)")
    k = header.index(label_column)
    x, y = [], []
    for i, row in enumerate(body, start=2):
        if len(row) != len(header):
            raise DataError(f"{path}:{i}: {len(row)} fields, the header has {len(header)}")
        try:
            x.append([float(v) for j, v in enumerate(row) if j != k])
        except ValueError:
            raise DataError(f"{path}:{i}: a feature is not a number: {row}") from None
        y.append(row[k])
    return np.asarray(x, dtype=np.float32), np.asarray(y)


def _label_ids(ys: dict[str, np.ndarray], label_names: list[str] | None) -> tuple[dict[str, np.ndarray], list[str]]:
    """Class indices per split, and the class names (given, or read from the labels)."""
    def is_int(a: np.ndarray) -> bool:
        return np.issubdtype(a.dtype, np.integer) or all(str(v).lstrip("-").isdigit() for v in a.tolist())

    if all(is_int(y) for y in ys.values()):
        ids = {s: y.astype(np.int64) for s, y in ys.items()}
        top = max(int(y.max()) for y in ids.values() if len(y)) + 1
        names = list(label_names) if label_names else [str(i) for i in range(top)]
        for s, y in ids.items():
            if len(y) and (y.min() < 0 or y.max() >= len(names)):
                raise DataError(f"split {s!r}: labels must be in [0, {len(names)}); got {sorted(set(y.tolist()))[:5]}")
        return ids, names
    names = list(label_names) if label_names else sorted({str(v) for y in ys.values() for v in y.tolist()})
    index = {n: i for i, n in enumerate(names)}
    out = {}
    for s, y in ys.items():
        unknown = sorted({str(v) for v in y.tolist()} - set(index))
        if unknown:
            raise DataError(f"split {s!r}: labels {unknown[:5]} are not among label_names {names}")
        out[s] = np.asarray([index[str(v)] for v in y.tolist()], dtype=np.int64)
    return out, names


def array_classification_from_files(files: dict[str, str], label_column: str = "label",
                                    label_names: list[str] | None = None,
                                    input_shape: list[int] | None = None) -> ArrayClassification:
    """An :class:`ArrayClassification` from one ``.npz`` or ``.csv`` file per split (see the module docstring).

    Raises:
        DataError: a missing or unreadable file, a missing column, bad labels, shapes that do not agree.
    """
    if not isinstance(files, dict) or not files or "train" not in files:
        raise DataError(f"arrays: files maps split names to .npz/.csv files and includes 'train'; got {files!r}")
    xs, ys = {}, {}
    for split, name in files.items():
        path = Path(str(name))
        if not path.is_file():
            raise DataError(f"arrays: split {split!r}: no such file {path}")
        if path.suffix == ".npz":
            xs[split], ys[split] = _npz(path)
        elif path.suffix == ".csv":
            xs[split], ys[split] = _csv(path, label_column)
        else:
            raise DataError(f"arrays: split {split!r}: {path} is neither .npz nor .csv")
        if len(xs[split]) != len(ys[split]) or ys[split].ndim != 1:
            raise DataError(f"arrays: {path}: {len(xs[split])} inputs but {len(ys[split])} labels (y must be 1-D)")
    ids, names = _label_ids(ys, label_names)
    if len(np.unique(ids["train"])) < 2:
        raise DataError(f"arrays: the train split has a single class ({names[int(ids['train'][0])]!r}); a "
                        "classifier needs at least two")
    shape = tuple(input_shape) if input_shape else tuple(xs["train"].shape[1:])
    splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for s, x in xs.items():
        x = np.asarray(x, dtype=np.float32)
        if int(np.prod(x.shape[1:])) != int(np.prod(shape)):
            raise DataError(f"arrays: split {s!r} has inputs of shape {x.shape[1:]}, which do not fit {shape}")
        splits[s] = (x.reshape(len(x), *shape), ids[s])
    source: dict[str, Any] = {"files": {s: str(Path(str(p)).resolve()) for s, p in files.items()}}
    return ArrayClassification("arrays", names, splits, input_shape=shape, source=source)
