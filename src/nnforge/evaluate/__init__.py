"""Evaluation: metrics (a registry), quality and cost of models, side by side."""

from __future__ import annotations

from nnforge.evaluate.metrics import METRICS, accuracy, cosine_fidelity, macro_f1, majority_accuracy
from nnforge.evaluate.text import cost, cost_side_by_side, quality

__all__ = ["METRICS", "accuracy", "macro_f1", "majority_accuracy", "cosine_fidelity", "quality", "cost",
           "cost_side_by_side"]
