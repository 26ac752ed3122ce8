"""Quantization schemes, one folder each (config, packed layer, apply), and their kernels."""

from __future__ import annotations

from nnforge.compress.quantize.int8 import Int8Embedding, Int8Linear, Int8WeightOnlyConfig

__all__ = ["Int8WeightOnlyConfig", "Int8Linear", "Int8Embedding"]
