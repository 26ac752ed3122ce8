"""Gradual pruning during training (cubic schedule, recovery between pruning events, magnitude or movement
scores, unstructured or ending in an N:M pattern) as a training callback, and as the pruning transform
``gradual_prune`` that prunes while a given training runs."""

from __future__ import annotations

from nnforge.compress.prune.gradual.apply import apply_gradual
from nnforge.compress.prune.gradual.callback import (
    GradualPruning,
    cubic_sparsity,
    gradual_pruning_callback,
    nm_capped_keep,
)
from nnforge.compress.prune.gradual.config import GradualPruneConfig

__all__ = ["GradualPruneConfig", "GradualPruning", "apply_gradual", "cubic_sparsity", "gradual_pruning_callback",
           "nm_capped_keep"]
