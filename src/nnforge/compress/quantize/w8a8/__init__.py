"""W8A8: int8 weights and int8 activations (dynamic or static), with SmoothQuant migration."""

from __future__ import annotations

from nnforge.compress.quantize.w8a8.apply import apply_w8a8
from nnforge.compress.quantize.w8a8.config import W8A8Config

__all__ = ["W8A8Config", "apply_w8a8"]
