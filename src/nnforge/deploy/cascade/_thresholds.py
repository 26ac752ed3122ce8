"""Choosing each tier's ``min_confidence`` on validation data.

Every tier answers every validation input once (:meth:`Cascade.answer_all`; for a human tier the true labels,
:func:`oracle_answers`). Then each combination of thresholds — for every tier but the last, up to ``grid``
candidates taken from its own validation confidences (evenly spaced in rank), plus 0 — is routed exactly as
the cascade routes (same code, same caps), and scored by its validation accuracy and its cost. Cost is the
number of inputs that reach each tier, compared from the last tier down: a later tier is taken to cost more
than all earlier ones together (a person more than a large model, a large model more than a small one), so
one input fewer for the person beats any number more for the large model.

Two rules:

- ``"most-accurate"`` (default): the highest validation accuracy the caps allow; among the combinations within
  ``tolerance`` of it, the cheapest. It spends the budget the caps give where it buys accuracy, and so keeps its
  accuracy on new data better than a rule that stops at a bar.
- ``"cheapest"``: the cheapest combination whose validation accuracy is at least ``target_accuracy`` (by
  default the accuracy of the ``reference`` tier answering every input alone, the tier before the last unless
  named). It sits on the bar by construction, so on new data it lands below the bar about as often as above.
  When no combination reaches the bar, the most accurate one is returned with ``met_target=False``.

Ties go to the higher validation accuracy, then to the lower thresholds.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nnforge.deploy.cascade._config import CascadeConfig
from nnforge.deploy.cascade._routing import admit, allowance, stands
from nnforge.deploy.cascade._tier import ANSWERED, TierAnswer
from nnforge.errors import ConfigError, DataError

__all__ = ["ThresholdChoice", "choose_thresholds", "simulate"]

log = logging.getLogger(__name__)

RULES = ("most-accurate", "cheapest")


@dataclass(frozen=True)
class ThresholdChoice:
    """The thresholds chosen, the config that uses them, and what they did on the validation data."""

    rule: str
    thresholds: dict[str, float]
    config: CascadeConfig
    accuracy: float
    shares: dict[str, float]
    reached_shares: dict[str, float]
    reference: str
    reference_accuracy: float
    target: float | None
    met_target: bool
    candidates: int

    def to_dict(self) -> dict[str, Any]:
        out = dict(vars(self))
        out["config"] = self.config.to_dict()
        return out


@dataclass(frozen=True)
class _Table:
    """Every tier's validation answers as arrays (K tiers, N inputs)."""

    answered: np.ndarray  # (K, N) bool: status "answered"
    confidence: np.ndarray  # (K, N)
    correct: np.ndarray  # (K, N) bool


def _table(config: CascadeConfig, answers: Mapping[str, Sequence[TierAnswer]], truth: Sequence[Any]) -> _Table:
    missing = [name for name in config.names if name not in answers]
    if missing:
        raise ConfigError(f"choose_thresholds: no answers for tier(s) {missing}; give every tier's answers "
                          "(for a human tier, oracle_answers(truth) assumes reviewers are right)")
    n = len(truth)
    if n == 0:
        raise DataError("choose_thresholds: no validation inputs")
    bad = {name: len(answers[name]) for name in config.names if len(answers[name]) != n}
    if bad:
        raise DataError(f"choose_thresholds: {n} true labels, but the tiers gave {bad} answers")
    truth_s = [str(t) for t in truth]
    rows = [answers[name] for name in config.names]
    return _Table(np.array([[a.status == ANSWERED for a in r] for r in rows]),
                  np.array([[float(a.confidence) for a in r] for r in rows]),
                  np.array([[a.label == t for a, t in zip(r, truth_s, strict=True)] for r in rows]))


def _route(table: _Table, thresholds: Sequence[float], caps: Sequence[int | None]) -> tuple[np.ndarray, np.ndarray]:
    """Which tier's answer stands for each input, and how many inputs reached each tier — as
    :meth:`Cascade.run` routes a fresh cascade's first batch."""
    k_last, n = table.confidence.shape[0] - 1, table.confidence.shape[1]
    final = np.full(n, -1)
    reached = np.zeros(k_last + 1, dtype=np.int64)
    pending = np.arange(n)
    for k in range(k_last + 1):
        if k > 0 and len(pending):
            pending, held = admit(pending, table.answered[k - 1, pending], table.confidence[k - 1, pending], caps[k])
            final[held] = k - 1
        if not len(pending):
            break
        reached[k] = len(pending)
        ok = np.ones(len(pending), dtype=bool) if k == k_last else stands(
            table.answered[k, pending], table.confidence[k, pending], thresholds[k])
        final[pending[ok]] = k
        pending = pending[~ok]
    return final, reached


def simulate(config: CascadeConfig, answers: Mapping[str, Sequence[TierAnswer]],
             truth: Sequence[Any]) -> dict[str, Any]:
    """Route precomputed answers with ``config``'s thresholds and caps: ``{"accuracy", "shares",
    "reached_shares"}`` on these data (the figures :func:`choose_thresholds` compares)."""
    table = _table(config, answers, truth)
    n = table.confidence.shape[1]
    caps = [allowance(t.max_share, n, 0) for t in config.tiers]
    final, reached = _route(table, [t.min_confidence for t in config.tiers], caps)
    return _figures(config, table, final, reached)


def _figures(config: CascadeConfig, table: _Table, final: np.ndarray, reached: np.ndarray) -> dict[str, Any]:
    n = len(final)
    return {"accuracy": float(table.correct[final, np.arange(n)].mean()),
            "shares": {name: float((final == k).mean()) for k, name in enumerate(config.names)},
            "reached_shares": {name: float(reached[k] / n) for k, name in enumerate(config.names)}}


def _candidates(table: _Table, k: int, grid: int) -> list[float]:
    """0 and up to ``grid`` of tier ``k``'s own confidences on answers that could stand, evenly spaced in rank."""
    values = np.unique(table.confidence[k][table.answered[k]])
    if len(values) > grid:
        values = values[np.unique(np.round(np.linspace(0, len(values) - 1, grid)).astype(int))]
    return sorted({0.0, *(float(v) for v in values)})


def choose_thresholds(config: CascadeConfig, answers: Mapping[str, Sequence[TierAnswer]], truth: Sequence[Any], *,
                      rule: Literal["most-accurate", "cheapest"] = "most-accurate", tolerance: float = 0.0,
                      target_accuracy: float | None = None, reference: str | None = None, grid: int = 64,
                      max_combinations: int = 20_000) -> ThresholdChoice:
    """Choose every tier's ``min_confidence`` on validation data (the rules are in this module's docstring).

    Args:
        config: the cascade; its caps (``max_share``) are kept, its thresholds replaced.
        answers: tier name -> that tier's answer to every validation input (:meth:`Cascade.answer_all`).
        truth: the validation inputs' true labels (compared as strings).
        rule: ``"most-accurate"`` or ``"cheapest"``.
        tolerance: ``"most-accurate"``: accuracy that may be given up for a cheaper combination.
        target_accuracy: ``"cheapest"``: the bar; default the ``reference`` tier's accuracy alone.
        reference: the tier whose accuracy alone is reported (and is the default bar); default the tier
            before the last.
        grid: candidate thresholds per tier, at most (fewer when the product passes ``max_combinations``).
        max_combinations: most threshold combinations tried.

    Returns:
        A :class:`ThresholdChoice`; ``choice.config`` is the cascade config to run.
    """
    if rule not in RULES:
        raise ConfigError(f"The 'rule' parameter of choose_thresholds must be one of {list(RULES)}. Got {rule!r} "
                          "instead.")
    for label, value in (("tolerance", tolerance), ("target_accuracy", target_accuracy)):
        if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 1):
            raise ConfigError(f"The {label!r} parameter of choose_thresholds must be a number in [0, 1]. Got "
                              f"{value!r} instead.")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 1:
        raise ConfigError(f"The 'grid' parameter of choose_thresholds must be an int >= 1. Got {grid!r} instead.")
    reference = reference or config.names[-2]
    ref = config.names.index(config.tier(reference).name)
    table = _table(config, answers, truth)
    n, k_last = table.confidence.shape[1], len(config.tiers) - 1
    per_tier = max(2, min(grid, math.floor(max_combinations ** (1 / k_last))))
    grids = [_candidates(table, k, per_tier) for k in range(k_last)]
    caps = [allowance(t.max_share, n, 0) for t in config.tiers]
    scored = []
    for combination in itertools.product(*grids):
        final, reached = _route(table, [*combination, 0.0], caps)
        acc = float(table.correct[final, np.arange(n)].mean())
        # cheaper: fewer inputs reach the last tier, then the one before it, ...; then more accurate
        scored.append(((*(int(r) for r in reached[:0:-1]), -acc), acc, combination))
    reference_accuracy = float(table.correct[ref].mean())
    best_acc = max(s[1] for s in scored)
    target = None
    if rule == "cheapest":
        target = reference_accuracy if target_accuracy is None else float(target_accuracy)
        feasible = [s for s in scored if s[1] >= target - 1e-12]
    else:
        feasible = [s for s in scored if s[1] >= best_acc - tolerance - 1e-12]
    met = bool(feasible)
    if not feasible:
        log.warning("choose_thresholds: no thresholds reach validation accuracy %.4f (best %.4f); returning the "
                    "most accurate", target, best_acc)
        feasible = [s for s in scored if s[1] >= best_acc - 1e-12]
    _, acc, chosen = min(feasible, key=lambda s: s[0])  # min keeps the first (lowest thresholds) on ties
    final, reached = _route(table, [*chosen, 0.0], caps)
    thresholds = {name: float(t) for name, t in zip(config.names, chosen, strict=False)}
    new = config.with_thresholds(thresholds)
    figures = _figures(new, table, final, reached)
    return ThresholdChoice(rule=rule, thresholds=thresholds, config=new, accuracy=acc, shares=figures["shares"],
                           reached_shares=figures["reached_shares"], reference=config.names[ref],
                           reference_accuracy=reference_accuracy, target=target, met_target=met,
                           candidates=len(scored))
