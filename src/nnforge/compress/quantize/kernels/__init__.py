"""Low-bit CPU kernels for ``x @ W.T``: int8, int4, int2, ternary and binary packed weights.

>>> import torch
>>> from nnforge.compress.quantize.kernels import quantize_weight, qgemv
>>> w = quantize_weight(torch.randn(256, 512), "int4", group_size=64)
>>> qgemv(torch.randn(1, 512), w).shape
torch.Size([1, 256])

The C++ kernels (``qgemv.cpp``) are compiled with the machine's compiler at first use and cached; with no
compiler, or ``$NNFORGE_KERNELS=torch``, the same API runs the same arithmetic in pure torch. The matmul is the
custom op ``torch.ops.nnforge.qgemm`` (autograd and ``torch.compile`` see it). See docs/kernels.md.
"""

from __future__ import annotations

from nnforge.compress.quantize.kernels._build import compile_library
from nnforge.compress.quantize.kernels._dispatch import backend, qgemv
from nnforge.compress.quantize.kernels._format import FORMATS, LAYOUT_VERSION, PackedWeight, pack, padded_k, unpack
from nnforge.compress.quantize.kernels._reference import (
    dequantize_codes,
    from_int,
    integer_matmul,
    quantize_activations,
    quantize_codes,
    quantize_weight,
    reference_matmul,
)

__all__ = [
    "FORMATS",
    "LAYOUT_VERSION",
    "PackedWeight",
    "backend",
    "compile_library",
    "dequantize_codes",
    "from_int",
    "integer_matmul",
    "quantize_codes",
    "pack",
    "padded_k",
    "qgemv",
    "quantize_activations",
    "quantize_weight",
    "reference_matmul",
    "unpack",
]
