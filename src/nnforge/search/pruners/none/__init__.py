"""``none``: every trial runs to the end (Optuna's NopPruner)."""

from __future__ import annotations

from typing import Any

from nnforge.search._optuna import construct, optuna
from nnforge.search.pruners._registry import register_pruner


@register_pruner("none")
def no_pruner(options: dict[str, Any]) -> Any:
    return construct(optuna().pruners.NopPruner, options, where="pruner_options (none)")
