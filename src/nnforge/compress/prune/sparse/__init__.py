"""Sparse storage and execution of pruned Linear layers: :class:`SparsifyConfig`, :class:`SparseLinear`."""

from __future__ import annotations

from nnforge.compress.prune.sparse.apply import apply_sparsify
from nnforge.compress.prune.sparse.config import SparsifyConfig
from nnforge.compress.prune.sparse.layer import SparseLinear

__all__ = ["SparsifyConfig", "SparseLinear", "apply_sparsify"]
