"""The pruner registry: a name in ``SearchConfig.pruner`` -> a factory building an Optuna pruner."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nnforge.registry import Registry

__all__ = ["PRUNERS", "PrunerFactory", "register_pruner"]

# factory(pruner_options) -> optuna.pruners.BasePruner
PrunerFactory = Callable[[dict[str, Any]], Any]

PRUNERS: Registry[PrunerFactory] = Registry("pruner")


def register_pruner(name: str) -> Callable[[PrunerFactory], PrunerFactory]:
    """Register a pruner factory under ``name`` (the decorator each pruner folder's ``__init__`` uses)."""
    return PRUNERS.register(name)
