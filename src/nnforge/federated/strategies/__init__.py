"""Aggregation strategies, registered by name: Flower's own, wrapped (``flower.py``), and the ones Flower's core
lacks (``scaffold.py``). A strategy is a Flower ``flwr.serverapp.strategy.Strategy`` built from a validated
config; nnforge drives its ``configure_train`` / ``aggregate_train`` round by round.

Adding a strategy is one new module in this folder::

    @register_strategy("mine", MineConfig, "what it does", client="plain")
    def build_mine(config: MineConfig, common: dict) -> flwr Strategy: ...

``common`` holds the options every strategy takes from :class:`~nnforge.federated.FederatedConfig`
(``fraction_train``, ``min_train_nodes``, ``min_available_nodes``, …). ``client`` names what the clients must do
beyond plain local training: ``"prox"`` (add FedProx's proximal term, its μ sent by the strategy) or
``"scaffold"`` (correct each step by the control variates the strategy sends).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from nnforge.config import Config, describe_validation_error
from nnforge.errors import ConfigError
from nnforge.registry import Registry, import_submodules

__all__ = ["STRATEGIES", "StrategySpec", "register_strategy", "strategy_names", "check_strategy_options",
           "build_strategy", "ClientRule"]

ClientRule = Literal["plain", "prox", "scaffold"]
BuildFn = Callable[[Any, dict[str, Any]], Any]


@dataclass(frozen=True)
class StrategySpec:
    name: str
    config: type[Config]
    description: str
    build: BuildFn
    client: ClientRule = "plain"
    robust: bool = False  # meant to tolerate poisoned updates (median, trimmed mean, Krum, Bulyan)
    source: str = "flower"  # whose implementation: "flower" (wrapped) or "nnforge"
    # a server-side optimizer (FedAvgM, FedAdam, …) steps every array it gets; on a model's buffers (BatchNorm's
    # running statistics) momentum can overshoot — a negative running variance is NaN — so nnforge replaces the
    # buffers it returns by the clients' weighted average
    average_buffers: bool = False


STRATEGIES: Registry[StrategySpec] = Registry("strategy")


def register_strategy(name: str, config: type[Config], description: str, *, client: ClientRule = "plain",
                      robust: bool = False, source: str = "flower",
                      average_buffers: bool = False) -> Callable[[BuildFn], BuildFn]:
    def decorator(fn: BuildFn) -> BuildFn:
        STRATEGIES.add(name, StrategySpec(name, config, description, fn, client, robust, source, average_buffers))
        return fn

    return decorator


def strategy_names() -> list[str]:
    return STRATEGIES.names()


def check_strategy_options(name: str, options: dict[str, Any]) -> Config:
    """The strategy's validated config; an unknown name or option is a :class:`ConfigError` naming it."""
    from pydantic import ValidationError

    spec = STRATEGIES.get(name, where="strategy")
    try:
        return spec.config.model_validate(options)
    except ValidationError as exc:
        raise ConfigError(f"strategy {name!r}: " + "; ".join(describe_validation_error(exc))) from None


def build_strategy(name: str, options: dict[str, Any], common: dict[str, Any]) -> Any:
    """A ready Flower strategy (imports Flower)."""
    spec = STRATEGIES.get(name, where="strategy")
    return spec.build(check_strategy_options(name, options), common)


import_submodules(__name__, __path__)  # each strategy module registers itself
