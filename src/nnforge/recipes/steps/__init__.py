"""Recipe steps, registered by name in :data:`STEPS`."""

from __future__ import annotations

from nnforge.recipes.steps import (  # noqa: F401  (registration)
    baselines,
    evaluate,
    finetune,
    gate,
    prune,
    quantize,
    report,
    search,
    train,
    upcycle,
)
from nnforge.recipes.steps._base import STEPS, NoOptions, RunContext, Step, StepResult

__all__ = ["STEPS", "Step", "StepResult", "RunContext", "NoOptions"]
