"""``tpe``: Optuna's TPESampler (single- and multi-objective), which reads the study's constraints.

``multivariate`` and ``group`` default to on here: spaces with conditional parameters are the common case, and
Optuna's docs recommend the grouped multivariate TPE for them; ``sampler_options`` may turn them off.
"""

from __future__ import annotations

from typing import Any

from nnforge.search._optuna import construct, optuna
from nnforge.search.samplers._registry import SamplerContext, register_sampler


@register_sampler("tpe")
def tpe_sampler(options: dict[str, Any], context: SamplerContext) -> Any:
    import warnings

    options = {"multivariate": True, "group": True, **options}
    with warnings.catch_warnings():  # multivariate/group are marked experimental; the choice is deliberate
        warnings.simplefilter("ignore", optuna().exceptions.ExperimentalWarning)
        return construct(optuna().samplers.TPESampler, options, where="sampler_options (tpe)",
                         seed=context.seed)
