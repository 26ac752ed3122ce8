"""Unstructured and N:M (2:4, 4:8) pruning: weights zeroed in place by a registered criterion."""

from __future__ import annotations

from nnforge.compress.prune.unstructured.apply import (
    apply_nm,
    apply_unstructured,
    prune_targets,
    sparsity_of,
    weight_of,
)
from nnforge.compress.prune.unstructured.config import NMConfig, UnstructuredConfig

__all__ = ["UnstructuredConfig", "NMConfig", "apply_unstructured", "apply_nm", "prune_targets", "sparsity_of",
           "weight_of"]
