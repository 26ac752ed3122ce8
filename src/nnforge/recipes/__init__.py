"""Recipes: validated YAML pipelines of registered steps, run with every action recorded in the ledger."""

from __future__ import annotations

from nnforge.recipes.cascade import RunTier, evaluate_cascade  # registers the cascade tier kind "run"
from nnforge.recipes.runner import RunResult, run_recipe
from nnforge.recipes.runs import Run, load_run
from nnforge.recipes.schema import Recipe, builtin_dir, load_recipe, parse_recipe
from nnforge.recipes.steps import STEPS

__all__ = ["Recipe", "load_recipe", "parse_recipe", "run_recipe", "RunResult", "Run", "load_run", "STEPS",
           "builtin_dir", "RunTier", "evaluate_cascade"]
