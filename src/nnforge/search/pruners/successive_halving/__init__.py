"""``successive-halving``: asynchronous successive halving (ASHA, Li et al. 2020), Optuna's implementation.

Rungs at ``min_resource * reduction_factor**k`` reported steps; at each rung only the top
``1/reduction_factor`` of trials go on.
"""

from __future__ import annotations

from typing import Any

from nnforge.search._optuna import construct, optuna
from nnforge.search.pruners._registry import register_pruner


@register_pruner("successive-halving")
def successive_halving_pruner(options: dict[str, Any]) -> Any:
    return construct(optuna().pruners.SuccessiveHalvingPruner, options,
                     where="pruner_options (successive-halving)")
