"""``random``: Optuna's RandomSampler, independent uniform draws (the baseline every strategy must beat).

It ignores constraints when sampling; the search still records each trial's feasibility.
"""

from __future__ import annotations

from typing import Any

from nnforge.search._optuna import construct, optuna
from nnforge.search.samplers._registry import SamplerContext, register_sampler


@register_sampler("random")
def random_sampler(options: dict[str, Any], context: SamplerContext) -> Any:
    return construct(optuna().samplers.RandomSampler, options, where="sampler_options (random)", seed=context.seed)
