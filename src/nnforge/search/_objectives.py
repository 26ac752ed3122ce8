"""Objectives and constraints: what a study optimises and the limits a trial must respect.

An objective names a metric the trial function returns and a direction. A constraint is a string
``"latency_b1_ms <= 3"`` parsed once into (metric, operator, bound); Optuna receives it as a constraint value
(``<= 0`` means satisfied) set on each finished trial (``Trial.set_constraint``, which replaced the samplers'
``constraints_func`` in Optuna 5), never as a penalty on the objective, so an infeasible trial keeps its true
metrics and is marked infeasible.

>>> c = Constraint.parse("size_mb <= 10")
>>> c.violation({"size_mb": 12.5}), c.violation({"size_mb": 4.0})
(2.5, -6.0)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from nnforge.config import Config
from nnforge.errors import ConfigError

__all__ = ["Objective", "Constraint", "objective_values", "constraint_violations", "UNKNOWN_VIOLATION"]

# What a constraint reads as when its metric is unknown (a pruned trial stopped before measuring it):
# not satisfied, so samplers never learn from it as feasible.
UNKNOWN_VIOLATION = math.inf

_CONSTRAINT = re.compile(r"^\s*([A-Za-z_][\w.\-]*)\s*(<=|>=)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*$")


class Objective(Config):
    """One objective: the name of a metric the trial function returns, and whether to minimise or maximise it."""

    metric: str
    direction: Literal["minimize", "maximize"] = "minimize"


@dataclass(frozen=True)
class Constraint:
    """``metric op bound`` with op ``<=`` or ``>=``; :meth:`violation` is ``<= 0`` when satisfied."""

    metric: str
    op: Literal["<=", ">="]
    bound: float

    @classmethod
    def parse(cls, text: str, *, where: str = "constraints") -> Constraint:
        """Parse ``"latency_b1_ms <= 3"``.

        Raises:
            ConfigError: not of the form ``METRIC <= NUMBER`` or ``METRIC >= NUMBER``.
        """
        match = _CONSTRAINT.match(text) if isinstance(text, str) else None
        if match is None:
            raise ConfigError(f"{where}: cannot read constraint {text!r}; write it as 'METRIC <= NUMBER' or "
                              f"'METRIC >= NUMBER', e.g. 'latency_b1_ms <= 3' or 'cos_mean >= 0.995'")
        op: Literal["<=", ">="] = "<=" if match.group(2) == "<=" else ">="
        return cls(match.group(1), op, float(match.group(3)))

    def violation(self, metrics: Mapping[str, float]) -> float:
        """How far ``metrics`` are past the bound (``<= 0``: satisfied); unknown metric: ``UNKNOWN_VIOLATION``."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(value):
            return UNKNOWN_VIOLATION
        return float(value - self.bound) if self.op == "<=" else float(self.bound - value)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.bound:g}"


def _missing(kind: str, name: str, metrics: Mapping[str, Any], number: int) -> ConfigError:
    return ConfigError(f"trial {number}: the {kind} needs metric {name!r} but the trial function returned "
                       f"{sorted(metrics) or 'no metrics'}; return it from the trial function or fix the name")


def objective_values(objectives: Sequence[Objective], metrics: Mapping[str, Any], *, number: int) -> list[float]:
    """The objective values of a finished trial, in the order of ``objectives``.

    Raises:
        ConfigError: a metric is missing or not a number (a mistake in the trial function or the config).
    """
    values = []
    for obj in objectives:
        if obj.metric not in metrics:
            raise _missing("objective", obj.metric, metrics, number)
        value = metrics[obj.metric]
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"trial {number}: metric {obj.metric!r} must be a number. Got {value!r}")
        values.append(float(value))
    return values


def constraint_violations(constraints: Sequence[Constraint], metrics: Mapping[str, Any], *, number: int,
                          strict: bool) -> list[float]:
    """One violation per constraint (``<= 0`` satisfied).

    Args:
        strict: a finished trial must report every constrained metric (ConfigError otherwise); a pruned one
            may not have measured it, which reads as unsatisfied.
    """
    if strict:
        for c in constraints:
            if c.metric not in metrics:
                raise _missing("constraint " + repr(str(c)), c.metric, metrics, number)
    return [c.violation(metrics) for c in constraints]
