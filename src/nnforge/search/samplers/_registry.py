"""The sampler registry: a name in ``SearchConfig.sampler`` -> a factory building an Optuna sampler."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nnforge.registry import Registry

__all__ = ["SAMPLERS", "SamplerContext", "SamplerFactory", "register_sampler"]


@dataclass(frozen=True)
class SamplerContext:
    """What the search tells a sampler factory besides the user's ``sampler_options``.

    Constraints reach samplers the Optuna 5 way: the search sets each finished trial's constraint values with
    ``Trial.set_constraint`` (``<= 0`` satisfied; named by the constraint's text, e.g. ``"size_mb <= 10"``), and
    a sampler reads them from ``FrozenTrial.constraints``. ``constraints`` lists those names.
    """

    seed: int | None
    directions: Sequence[str]
    constraints: Sequence[str] = ()
    space: Mapping[str, Any] = field(default_factory=dict)


# factory(sampler_options, context) -> optuna.samplers.BaseSampler
SamplerFactory = Callable[[dict[str, Any], SamplerContext], Any]

SAMPLERS: Registry[SamplerFactory] = Registry("sampler")


def register_sampler(name: str) -> Callable[[SamplerFactory], SamplerFactory]:
    """Register a sampler factory under ``name`` (the decorator each sampler folder's ``__init__`` uses)."""
    return SAMPLERS.register(name)
