"""The one place that imports Optuna, so a missing install fails with the extra to install."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from nnforge.errors import ConfigError, MissingDependencyError

__all__ = ["optuna", "construct"]


def optuna() -> Any:
    """The ``optuna`` module.

    Raises:
        MissingDependencyError: Optuna is not installed.
    """
    try:
        import optuna as module
    except ImportError as exc:
        raise MissingDependencyError("search needs Optuna: pip install 'nnforge[search]'") from exc
    return module


def construct(cls: Callable[..., Any], options: dict[str, Any], *, where: str, **fixed: Any) -> Any:
    """``cls(**options, **fixed)``, with an unknown or bad option reported as a ConfigError naming ``where``."""
    taken = sorted(set(options) & set(fixed))
    if taken:
        raise ConfigError(f"{where}: {taken} are set by the search itself (seed, constraints); remove them")
    accepted = set(inspect.signature(cls).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ConfigError(f"{where}: {getattr(cls, '__name__', cls)} has no option {unknown}; "
                          f"it takes {', '.join(sorted(accepted - set(fixed)))}")
    try:
        return cls(**options, **fixed)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None
