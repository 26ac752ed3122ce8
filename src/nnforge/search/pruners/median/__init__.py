"""``median``: stop a trial whose intermediate value is worse than the median of earlier trials at that step."""

from __future__ import annotations

from typing import Any

from nnforge.search._optuna import construct, optuna
from nnforge.search.pruners._registry import register_pruner


@register_pruner("median")
def median_pruner(options: dict[str, Any]) -> Any:
    return construct(optuna().pruners.MedianPruner, options, where="pruner_options (median)")
