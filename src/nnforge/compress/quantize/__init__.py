"""Quantization: schemes (one folder each: config, packed layer, apply), calibrators, QAT, mixed precision,
and the packed CPU kernels. ``calibrate``, ``qat`` and ``mixed`` are imported on use."""

from __future__ import annotations

from nnforge.compress.quantize.w8a8 import W8A8Config
from nnforge.compress.quantize.weight_only import (
    BinaryConfig,
    Int2WeightOnlyConfig,
    Int3WeightOnlyConfig,
    Int4WeightOnlyConfig,
    Int8WeightOnlyConfig,
    QuantizedConv2d,
    QuantizedEmbedding,
    QuantizedLinear,
    TernaryConfig,
    WeightOnlyConfig,
    measure_verdicts,
)

__all__ = [
    "WeightOnlyConfig", "Int8WeightOnlyConfig", "Int4WeightOnlyConfig", "Int3WeightOnlyConfig",
    "Int2WeightOnlyConfig", "TernaryConfig", "BinaryConfig", "W8A8Config", "QuantizedLinear",
    "QuantizedEmbedding", "QuantizedConv2d", "measure_verdicts",
]
