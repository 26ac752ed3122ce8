"""Recipe steps, registered by name in :data:`STEPS`: every public module here registers its step when imported,
so a new step is one new file."""

from __future__ import annotations

from nnforge.recipes.steps._base import STEPS, NoOptions, RunContext, Step, StepResult
from nnforge.registry import import_submodules

import_submodules(__name__, __path__)

__all__ = ["STEPS", "Step", "StepResult", "RunContext", "NoOptions"]
