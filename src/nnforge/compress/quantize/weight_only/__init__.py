"""Weight-only quantization, int8 down to 1-bit: config, packed layers, apply."""

from __future__ import annotations

from nnforge.compress.quantize.weight_only.apply import apply_weight_only, measure_verdicts, quantize_matrix
from nnforge.compress.quantize.weight_only.config import (
    BinaryConfig,
    Int2WeightOnlyConfig,
    Int3WeightOnlyConfig,
    Int4WeightOnlyConfig,
    Int8WeightOnlyConfig,
    TernaryConfig,
    WeightOnlyConfig,
)
from nnforge.compress.quantize.weight_only.layer import (
    QuantizedConv2d,
    QuantizedEmbedding,
    QuantizedLinear,
    float_activations,
)

__all__ = [
    "WeightOnlyConfig", "Int8WeightOnlyConfig", "Int4WeightOnlyConfig", "Int3WeightOnlyConfig",
    "Int2WeightOnlyConfig", "TernaryConfig", "BinaryConfig", "QuantizedLinear", "QuantizedEmbedding",
    "QuantizedConv2d", "float_activations", "apply_weight_only", "measure_verdicts", "quantize_matrix",
]
