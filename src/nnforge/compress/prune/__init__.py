"""Pruning: criteria (registered by name), unstructured and N:M masks, gradual schedules as training callbacks,
sensitivity and allocation, structured removal and sparse kernels (one folder each).

>>> from nnforge.compress import prune_, UnstructuredConfig
>>> report = prune_(model, UnstructuredConfig(sparsity=0.5, criterion="wanda"), calibration=batches)  # doctest: +SKIP

Every public folder here is imported with this package, so whatever it registers (a transform with
``register_transform(..., kind="prune")``, a criterion, a sparse format) is known to ``prune_``, saved-model
loading and the ``prune`` recipe step: a new method is one new folder, and nothing here lists it.
"""

from __future__ import annotations

from nnforge.compress.prune.allocate import SparsityPlan, allocate_sparsity, prune_sensitivity
from nnforge.compress.prune.criteria import CRITERIA, CriterionSpec, Pattern, PruneJob, keep_mask, register_criterion
from nnforge.compress.prune.gradual import GradualPruneConfig, GradualPruning, cubic_sparsity, gradual_pruning_callback
from nnforge.compress.prune.sparse import SparseLinear, SparsifyConfig
from nnforge.compress.prune.structured import StructuredPruneConfig
from nnforge.compress.prune.unstructured import NMConfig, UnstructuredConfig, sparsity_of
from nnforge.registry import import_submodules

__all__ = ["CRITERIA", "CriterionSpec", "Pattern", "PruneJob", "keep_mask", "register_criterion",
           "UnstructuredConfig", "NMConfig", "sparsity_of", "GradualPruneConfig", "GradualPruning", "cubic_sparsity",
           "gradual_pruning_callback", "prune_sensitivity", "allocate_sparsity", "SparsityPlan", "StructuredPruneConfig",
           "SparsifyConfig", "SparseLinear"]

import_submodules(__name__, __path__)  # registers every method, criterion and format of this folder
