"""int8 weight-only quantization: per-channel scales, real int8 storage."""

from __future__ import annotations

from nnforge.compress.quantize.int8.apply import apply_int8_weight_only
from nnforge.compress.quantize.int8.config import Int8WeightOnlyConfig
from nnforge.compress.quantize.int8.layer import Int8Embedding, Int8Linear, quantize_per_row

__all__ = ["Int8WeightOnlyConfig", "Int8Linear", "Int8Embedding", "apply_int8_weight_only", "quantize_per_row"]
