"""A training example as a few lines of text, for listing influential examples in a terminal or a report."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from nnforge.errors import DataError

__all__ = ["preview_example"]

SHADES = " .:-=+*#%@"  # dark to bright


def _grid(values: np.ndarray) -> np.ndarray | None:
    """An image as (H, W): (H, W), (1, H, W), (H, W, 1), or a flat vector of a square number of pixels."""
    a = np.squeeze(values)
    if a.ndim == 1:
        side = math.isqrt(a.size)
        return a.reshape(side, side) if side * side == a.size and side > 1 else None
    return a if a.ndim == 2 else None


def preview_example(example: Any, *, max_chars: int = 300) -> str:
    """Text as itself (cut at ``max_chars``); a grayscale image as ASCII art, one character per pixel.

    Images are scaled from their own min to max; other arrays are shown as numbers.

    Raises:
        DataError: ``example`` is neither text nor an array.
    """
    if isinstance(example, str):
        return example if len(example) <= max_chars else example[: max_chars - 1] + "…"
    if isinstance(example, torch.Tensor):
        example = example.detach().cpu().float().numpy()
    if not isinstance(example, np.ndarray | list | tuple):
        raise DataError(f"cannot preview a {type(example).__name__}: give the text or the image array")
    values = np.asarray(example, dtype=np.float64)
    grid = _grid(values)
    if grid is None:
        return np.array2string(values, precision=3, threshold=40)
    lo, hi = float(grid.min()), float(grid.max())
    levels = np.zeros_like(grid, dtype=np.int64) if hi <= lo else np.rint(
        (grid - lo) / (hi - lo) * (len(SHADES) - 1)).astype(np.int64)
    return "\n".join("".join(SHADES[v] * 2 for v in row) for row in levels)  # doubled: terminal cells are tall
