"""The registry of feature-attribution methods: each registers itself from its own module in ``methods/``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nnforge.registry import Registry

__all__ = ["ATTRIBUTION_METHODS", "register_method", "Method"]

# (subject of one example, config, target class) -> (one score per unit, extras such as the completeness reached)
Method = Callable[[Any, Any, int], tuple[Any, dict[str, Any]]]
ATTRIBUTION_METHODS: Registry[Method] = Registry("attribution method")


def register_method(name: str) -> Callable[[Method], Method]:
    """Decorator: register an attribution method under ``name``."""
    return ATTRIBUTION_METHODS.register(name)
