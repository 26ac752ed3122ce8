"""Quantization: methods (one folder each: config, packed layer, apply), calibrators, QAT, mixed precision,
and the packed CPU kernels.

Every public folder here is imported with this package, so whatever it registers (a transform with
``register_transform(..., kind="quantize")``, a weight format, a calibrator) is known to ``quantize_``,
saved-model loading and the ``quantize`` recipe step: a new method is one new folder, and nothing here
or elsewhere lists it. The re-exports below are only short import paths for the built-in ones."""

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
    float_activations,
    measure_verdicts,
)
from nnforge.registry import import_submodules

__all__ = [
    "WeightOnlyConfig", "Int8WeightOnlyConfig", "Int4WeightOnlyConfig", "Int3WeightOnlyConfig",
    "Int2WeightOnlyConfig", "TernaryConfig", "BinaryConfig", "W8A8Config", "QuantizedLinear",
    "QuantizedEmbedding", "QuantizedConv2d", "measure_verdicts", "float_activations",
]

import_submodules(__name__, __path__)  # registers every method, format and calibrator of this folder
