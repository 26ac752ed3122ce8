"""Gradual pruning during training (cubic schedule, recovery between pruning events, magnitude or movement
scores) as a training callback."""

from __future__ import annotations

from nnforge.compress.prune.gradual.callback import GradualPruning, cubic_sparsity, gradual_pruning_callback
from nnforge.compress.prune.gradual.config import GradualPruneConfig

__all__ = ["GradualPruneConfig", "GradualPruning", "cubic_sparsity", "gradual_pruning_callback"]
