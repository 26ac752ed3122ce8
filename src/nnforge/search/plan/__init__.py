"""Compression-plan search: one weight format and group size per layer (``"int8"``, ``"int4/g32"``,
``"int4/g128"``, ``"fp32"`` kept) as an Optuna space,
each plan applied with ``nnforge.compress.quantize_`` and measured: fidelity (or accuracy), size, latency.

>>> from nnforge.search import Param
>>> from nnforge.search.plan import PlanSearchConfig
>>> config = PlanSearchConfig(formats=["int8", "int4/g32", "int4/g128"], constraints=["size_mb <= 15"])
>>> config.search_config({"plan:fc": Param(kind="categorical", choices=["int8", "int4"])}).sampler
'nsga2'

:func:`plan_search` runs the study; :func:`apply_plan` builds one plan's model; :func:`plan_from_params` reads a
trial's plan back.
"""

from __future__ import annotations

from nnforge.search.plan.apply import apply_plan, plan_from_params, plan_modules, plan_space
from nnforge.search.plan.config import PLAN_PREFIX, PlanSearchConfig, parse_choice
from nnforge.search.plan.layers import PlanQuantizer
from nnforge.search.plan.run import measure_plan, plan_search

__all__ = ["PlanSearchConfig", "PlanQuantizer", "plan_search", "measure_plan", "apply_plan", "plan_space", "plan_modules",
           "plan_from_params", "parse_choice", "PLAN_PREFIX"]
