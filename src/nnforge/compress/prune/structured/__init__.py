"""Structured pruning with physical removal: attention heads, FFN neurons, conv channels and whole blocks."""

from __future__ import annotations

from nnforge.compress.prune.structured.apply import StructuredPlan, apply_structured, plan_structured
from nnforge.compress.prune.structured.config import StructuredPruneConfig
from nnforge.compress.prune.structured.layer import PrunedCausalSelfAttention, RemovedBlock
from nnforge.compress.prune.structured.structures import Structure, find_structures

__all__ = ["StructuredPruneConfig", "StructuredPlan", "apply_structured", "plan_structured", "PrunedCausalSelfAttention",
           "RemovedBlock", "Structure", "find_structures"]
