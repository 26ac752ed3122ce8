"""Sparse CPU kernels for ``x @ W.T`` where pruning kept 2 of every 4 weights (2:4) or any subset (CSR).

>>> import torch
>>> from nnforge.compress.prune.kernels import sparsify_weight, sparse_mm
>>> W = torch.randn(256, 512) * (torch.arange(512) % 4 < 2)  # 2 of every 4 weights kept
>>> w = sparsify_weight(W, "2:4")
>>> sparse_mm(torch.randn(3, 512), w).shape
torch.Size([3, 256])

Four registered formats: ``2:4`` (fp32 values + 2-bit positions), ``2:4-int8`` (int8 values, one scale per
row), ``csr`` and ``csr-int8`` (uint16 column indices). The C++ kernels (``sparse.cpp``) are compiled at first
use and cached like the quantized kernels; with no compiler, or ``$NNFORGE_KERNELS=torch``, the same API runs
the same arithmetic in torch (:func:`reference_sparse_mm`). The matmul is the custom op
``torch.ops.nnforge.sparse_mm``. See docs/kernels.md, "Sparse kernels".
"""

from __future__ import annotations

from nnforge.compress.prune.kernels._format import (
    SPARSE_FORMATS,
    SparseFormatSpec,
    SparseWeight,
    register_sparse_format,
    sparse_format,
    sparsify_weight,
)
from nnforge.compress.prune.kernels._ops import sparse_backend, sparse_mm
from nnforge.compress.prune.kernels._reference import reference_sparse_mm

__all__ = ["SPARSE_FORMATS", "SparseFormatSpec", "SparseWeight", "register_sparse_format", "sparse_format",
           "sparsify_weight", "sparse_mm", "sparse_backend", "reference_sparse_mm"]
