"""Non-uniform pruning: measure each layer's sensitivity per sparsity level, then allocate ratios under a budget.

>>> from nnforge.compress.prune.allocate import prune_sensitivity, allocate_sparsity
>>> sens = prune_sensitivity(model, batches, criterion="wanda")                       # doctest: +SKIP
>>> plan = allocate_sparsity(sens, budget=0.6, kind="sparsity")                       # doctest: +SKIP
>>> prune_(model, UnstructuredConfig(criterion="wanda", plan=plan.ratios), calibration=batches)  # doctest: +SKIP

The allocator is the one mixed-precision quantization uses (``nnforge.compress._allocate``): every layer starts
at its densest level and the cheapest step (least added error per kept weight, FLOP or millisecond saved) is
taken until the budget holds.
"""

from __future__ import annotations

from nnforge.compress.prune.allocate.allocate import SparsityPlan, allocate_sparsity
from nnforge.compress.prune.allocate.sensitivity import SparseExecution, SparsityOption, prune_sensitivity

__all__ = ["SparsityOption", "SparseExecution", "prune_sensitivity", "SparsityPlan", "allocate_sparsity"]
