"""Recipe steps, registered by name in :data:`STEPS`."""

from __future__ import annotations

from nnforge.recipes.steps import baselines, evaluate, finetune, gate, prune, quantize, report, search, train  # noqa: F401  (registration)
from nnforge.recipes.steps._base import STEPS, NoOptions, RunContext, Step, StepResult

__all__ = ["STEPS", "Step", "StepResult", "RunContext", "NoOptions"]
