"""``nsga2``: Optuna's NSGAIISampler, the multi-objective genetic algorithm, with constrained domination (constraints read from each trial)."""

from __future__ import annotations

from typing import Any

from nnforge.search._optuna import construct, optuna
from nnforge.search.samplers._registry import SamplerContext, register_sampler


@register_sampler("nsga2")
def nsga2_sampler(options: dict[str, Any], context: SamplerContext) -> Any:
    return construct(optuna().samplers.NSGAIISampler, options, where="sampler_options (nsga2)",
                     seed=context.seed)
