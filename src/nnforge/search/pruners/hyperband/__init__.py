"""``hyperband``: Hyperband (Li et al. 2018) over successive-halving brackets, Optuna's implementation.

Give ``max_resource`` as the number of intermediate reports a full trial makes (e.g. evaluations of a run).
"""

from __future__ import annotations

from typing import Any

from nnforge.search._optuna import construct, optuna
from nnforge.search.pruners._registry import register_pruner


@register_pruner("hyperband")
def hyperband_pruner(options: dict[str, Any]) -> Any:
    return construct(optuna().pruners.HyperbandPruner, options, where="pruner_options (hyperband)")
