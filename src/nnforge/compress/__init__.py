"""Compression: quantization (and, later, pruning) as in-place transforms driven by config objects.

>>> from nnforge.compress import quantize_, Int8WeightOnlyConfig
>>> report = quantize_(model, Int8WeightOnlyConfig())  # doctest: +SKIP
>>> report.bytes_after / report.bytes_before  # doctest: +SKIP
0.25...
"""

from __future__ import annotations

from torch import nn

from nnforge.compress._transform import ModuleChange, ModuleFilter, TransformReport, apply_
from nnforge.compress.quantize import Int8Embedding, Int8Linear, Int8WeightOnlyConfig
from nnforge.config import Config

__all__ = [
    "quantize_",
    "apply_",
    "TransformReport",
    "ModuleChange",
    "Int8WeightOnlyConfig",
    "Int8Linear",
    "Int8Embedding",
]


def quantize_(model: nn.Module, config: Config, filter: ModuleFilter | None = None) -> TransformReport:
    """Quantize ``model`` in place as ``config`` says; see :func:`apply_` for the contract."""
    return apply_(model, config, filter)
