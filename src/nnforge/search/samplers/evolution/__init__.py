"""``evolution``: regularized (aging) evolution, Real et al. 2019, as an Optuna sampler.

``sampler_options``: ``population_size`` (default 20) and ``sample_size`` (the tournament, default 5). The
population and each child's lineage live in the study's storage, so parallel workers run one evolution; see
:class:`~nnforge.search.samplers.evolution._sampler.EvolutionSampler`.
"""

from __future__ import annotations

from typing import Any

from nnforge.search._optuna import construct, optuna
from nnforge.search.samplers._registry import SamplerContext, register_sampler


@register_sampler("evolution")
def evolution_sampler(options: dict[str, Any], context: SamplerContext) -> Any:
    optuna()  # the missing-Optuna error names the extra to install
    from nnforge.search.samplers.evolution._sampler import EvolutionSampler

    return construct(EvolutionSampler, options, where="sampler_options (evolution)", seed=context.seed)
