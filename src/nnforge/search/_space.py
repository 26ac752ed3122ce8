"""Search spaces: named parameters (float, int, categorical, conditional) and sampling them on a trial.

A space is ``dict[str, Param]``. Keys are free names (``"lr"``) or recipe paths
(``"steps[0].train.optimizer_options.lr"``); the search never interprets them. A parameter with ``when`` exists
only while the named other parameters take one of the listed values, so ``suggest`` samples parents first
and skips a child whose condition fails (it is absent from the trial's params, not set to a dummy value).

>>> from nnforge.search import Param
>>> space = {"optimizer": Param(kind="categorical", choices=["adamw", "sgd"]),
...          "momentum": Param(kind="float", low=0.8, high=0.99, when={"optimizer": ["sgd"]})}
>>> order(space)
['optimizer', 'momentum']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import model_validator

from nnforge.config import Config
from nnforge.errors import ConfigError

__all__ = ["Param", "check_space", "order", "suggest", "is_active"]

Choice = bool | int | float | str | None


class Param(Config):
    """One searched parameter.

    ``float``/``int`` take ``low``/``high`` (inclusive) and optionally ``log`` (sample on a log scale) or ``step``
    (a grid from ``low``); ``categorical`` takes ``choices``. ``when`` makes the parameter conditional:
    ``{"optimizer": ["sgd"]}`` means it exists only in trials whose ``optimizer`` is ``"sgd"``.
    """

    kind: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Choice] | None = None
    when: dict[str, list[Choice]] = {}

    @model_validator(mode="after")
    def _check(self) -> Param:
        if self.kind == "categorical":
            if not self.choices:
                raise ValueError("a categorical Param needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical Param takes only 'choices' (and 'when'); remove low/high/log/step")
            return self
        if self.choices is not None:
            raise ValueError(f"a {self.kind} Param takes low/high, not 'choices'; use kind 'categorical' for a list")
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.kind} Param needs both 'low' and 'high'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low > self.high:
            raise ValueError(f"a {self.kind} Param needs finite low <= high. Got low={self.low}, high={self.high}")
        if self.log and self.step is not None:
            raise ValueError("'log' and 'step' cannot be combined (Optuna samples a log scale without a grid)")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale Param needs low > 0. Got {self.low}")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"'step' must be > 0. Got {self.step}")
        if self.kind == "int":
            for name in ("low", "high", "step"):
                value = getattr(self, name)
                if value is not None and value != int(value):
                    raise ValueError(f"an int Param needs an integer {name!r}. Got {value}")
        return self

    def allows(self, value: Any) -> bool:
        """Whether ``value`` is one this parameter can take (used to check ``when`` conditions)."""
        if self.kind == "categorical":
            return value in (self.choices or [])
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        return float(self.low or 0.0) <= value <= float(self.high or 0.0)


def check_space(space: Mapping[str, Param], *, where: str = "space") -> None:
    """Check that every ``when`` names another parameter of the space, with values it can take, and no cycle.

    Raises:
        ConfigError: one line per problem, each naming the parameter.
    """
    def at(path: str) -> str:
        return f"{where}.{path}" if where else path

    if not space:
        raise ConfigError(f"{where + ': ' if where else ''}the search space is empty; declare at least one parameter")
    problems = []
    for name, param in space.items():
        for parent, values in param.when.items():
            if parent == name:
                problems.append(f"{at(name)}.when: a parameter cannot depend on itself")
            elif parent not in space:
                problems.append(f"{at(name)}.when: {parent!r} is not a parameter of the space "
                                f"(parameters: {', '.join(sorted(space))})")
            elif not values:
                problems.append(f"{at(name)}.when.{parent}: list the values of {parent!r} that enable {name!r}")
            else:
                bad = [v for v in values if not space[parent].allows(v)]
                if bad:
                    problems.append(f"{at(name)}.when.{parent}: {bad} can never be taken by {parent!r}")
    if problems:
        raise ConfigError("\n".join(problems))
    order(space, where=where)


def order(space: Mapping[str, Param], *, where: str = "space") -> list[str]:
    """The parameter names with every parent before its children (declaration order otherwise kept).

    Raises:
        ConfigError: the ``when`` conditions form a cycle.
    """
    done: list[str] = []
    pending = list(space)
    while pending:
        ready = [n for n in pending if all(p in done or p not in space for p in space[n].when)]
        if not ready:
            raise ConfigError(f"{where + ': ' if where else ''}the 'when' conditions of {', '.join(pending)} form a cycle")
        done += ready
        pending = [n for n in pending if n not in ready]
    return done


def is_active(param: Param, params: Mapping[str, Any]) -> bool:
    """Whether a parameter exists given the values already sampled: every parent present, each allowed."""
    return all(parent in params and params[parent] in values for parent, values in param.when.items())


def suggest(trial: Any, space: Mapping[str, Param]) -> dict[str, Any]:
    """Sample ``space`` on an Optuna trial: parents first; conditional parameters only when active.

    Returns:
        the sampled values by name (inactive parameters absent). Ints come back as ``int``.
    """
    params: dict[str, Any] = {}
    for name in order(space):
        param = space[name]
        if not is_active(param, params):
            continue
        if param.kind == "categorical":
            params[name] = trial.suggest_categorical(name, param.choices)
        elif param.kind == "int":
            params[name] = trial.suggest_int(name, int(param.low or 0), int(param.high or 0),
                                             step=int(param.step or 1), log=param.log)
        else:
            params[name] = trial.suggest_float(name, float(param.low or 0.0), float(param.high or 0.0),
                                               step=param.step, log=param.log)
    return params
