"""Inputs for models over tensors on the command line: a ``.npz`` (array ``x``), ``.npy`` or CSV file of examples."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nnforge.errors import DataError, not_utf8

__all__ = ["read_inputs", "tensor_rows"]


def _csv_rows(path: Path, label_column: str | None) -> np.ndarray:
    try:
        with path.open(encoding="utf-8", newline="") as f:
            rows = [r for r in csv.reader(f) if r]
    except UnicodeDecodeError as exc:
        raise DataError(not_utf8(path, exc)) from None
    if len(rows) < 2:
        raise DataError(f"{path}: a CSV of inputs needs a header row and at least one row")
    header = rows[0]
    keep = [j for j, name in enumerate(header) if name != label_column]
    try:
        return np.asarray([[float(r[j]) for j in keep] for r in rows[1:]], dtype=np.float32)
    except (ValueError, IndexError):
        raise DataError(f"{path}: every row needs {len(header)} numeric fields (columns {header})") from None


def read_inputs(path: Path, config: dict[str, Any]) -> torch.Tensor:
    """The examples in ``path``, shaped as the run's data were (``input_shape`` of its recipe, when it gave one).

    Raises:
        DataError: a missing or unreadable file, an unknown suffix, non-numeric fields.
    """
    if not path.is_file():
        raise DataError(f"--inputs: no such file {path}")
    options = ((config.get("recipe") or {}).get("data") or {}).get("options") or {}
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as f:
                if "x" not in f.files:
                    raise DataError(f"{path}: an .npz of inputs holds an array 'x'; it has {sorted(f.files)}")
                x = np.asarray(f["x"], dtype=np.float32)
        elif path.suffix == ".npy":
            x = np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
        elif path.suffix == ".csv":
            x = _csv_rows(path, options.get("label_column", "label"))
        else:
            raise DataError(f"--inputs: {path} is not .npz, .npy or .csv")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not readable as inputs ({exc})") from None
    if x.ndim < 2 or not len(x):
        raise DataError(f"{path}: expected one example per row; got an array of shape {x.shape}")
    shape = options.get("input_shape")
    if shape and int(np.prod(x.shape[1:])) == int(np.prod(shape)):
        x = x.reshape(len(x), *shape)
    return torch.from_numpy(np.ascontiguousarray(x))


def tensor_rows(model: Any, x: torch.Tensor, label_names: list[str]) -> list[dict[str, Any]]:
    """Label, confidence and class probabilities per example of a classifier returning logits ``(B, C)``."""
    from nnforge.evaluate import tensor_outputs

    probs = torch.from_numpy(tensor_outputs(model, x, torch.zeros(len(x), dtype=torch.long)).probs)
    names = label_names or [str(i) for i in range(probs.shape[1])]
    if len(names) != probs.shape[1]:
        names = [str(i) for i in range(probs.shape[1])]
    return [{"index": i, "label": names[int(p.argmax())], "confidence": float(p.max()),
             "probabilities": {n: round(float(v), 6) for n, v in zip(names, p.tolist(), strict=True)}}
            for i, p in enumerate(probs)]
