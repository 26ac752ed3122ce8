"""Compression-plan search: one weight format per layer (int8 / int4 groups, fp32 kept) as an Optuna space,
each plan applied with ``nnforge.compress.quantize_`` and measured: fidelity (or accuracy), size, latency.

>>> from nnforge.search import Param
>>> from nnforge.search.plan import PlanSearchConfig
>>> config = PlanSearchConfig(formats=["int8", "int4"], constraints=["size_mb <= 15"])
>>> config.search_config({"plan:fc": Param(kind="categorical", choices=["int8", "int4"])}).sampler
'nsga2'

:func:`plan_search` runs the study; :func:`apply_plan` builds one plan's model; :func:`plan_from_params` reads a
trial's plan back.
"""

from __future__ import annotations

from nnforge.search.plan.apply import apply_plan, plan_from_params, plan_modules, plan_space
from nnforge.search.plan.config import GROUP_SIZE_KEY, PLAN_PREFIX, PlanSearchConfig
from nnforge.search.plan.run import measure_plan, plan_search

__all__ = ["PlanSearchConfig", "plan_search", "measure_plan", "apply_plan", "plan_space", "plan_modules",
           "plan_from_params", "PLAN_PREFIX", "GROUP_SIZE_KEY"]
