"""Deciding "worse" with a test instead of a point estimate: paired bootstrap intervals and McNemar's test.

Two models evaluated on the same examples are *paired*: resampling the examples (the same indices for
both) gives the sampling distribution of the difference of any metric, and McNemar's exact test asks
whether the examples only one of them gets right lean to one side more than chance allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nnforge.errors import ConfigError

__all__ = ["Interval", "bootstrap_interval", "mcnemar", "paired_bootstrap_diff_ci"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    confidence: float
    resamples: int

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "confidence": self.confidence,
                "resamples": self.resamples}


def bootstrap_interval(stat: Callable[[np.ndarray], float], n: int, *, resamples: int = 1000,
                       confidence: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap of ``stat(indices)`` over ``n`` examples.

    ``stat`` receives an index array (with repeats) and returns the statistic on those examples; for a
    paired difference it indexes both models' outputs with the same array. Resamples where the statistic is
    undefined (NaN, e.g. a class missing from the resample) are dropped.
    """
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be in (0, 1); got {confidence}")
    if resamples < 10:
        raise ConfigError(f"resamples must be at least 10; got {resamples}")
    estimate = float(stat(np.arange(n)))
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), confidence, 0)
    rng = np.random.default_rng(seed)
    values = np.array([stat(rng.integers(0, n, n)) for _ in range(resamples)], dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return Interval(estimate, float("nan"), float("nan"), confidence, 0)
    a = (1 - confidence) / 2
    return Interval(estimate, float(np.quantile(values, a)), float(np.quantile(values, 1 - a)), confidence, len(values))


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, float]:
    """McNemar's exact (binomial) two-sided test on paired correctness vectors.

    Returns ``b`` (A right, B wrong), ``c`` (A wrong, B right) and ``p_value``: the chance of a split at
    least this uneven between ``b`` and ``c`` if both models were equally accurate.
    """
    a, b_ = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b_.shape:
        raise ConfigError(f"paired correctness vectors differ in length: {a.shape} vs {b_.shape}")
    b, c = int((a & ~b_).sum()), int((~a & b_).sum())
    n, k = b + c, min(b, c)
    if n == 0:
        return {"b": 0, "c": 0, "p_value": 1.0}
    # two-sided exact: 2 * P(X <= k), X ~ Binomial(n, 1/2), summed in log space for large n
    logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2) for i in range(k + 1)]
    top = max(logs)
    p = 2 * math.exp(top) * sum(math.exp(v - top) for v in logs)
    return {"b": b, "c": c, "p_value": min(1.0, p)}


def paired_bootstrap_diff_ci(correct_a: Sequence[bool | int] | np.ndarray, correct_b: Sequence[bool | int] | np.ndarray,
                             *, alpha: float = 0.05, n_boot: int = 10000, seed: int = 0) -> dict[str, Any]:
    """Accuracy of A minus accuracy of B on the same test items, with its paired bootstrap interval and McNemar.

    Returns ``diff`` (a fraction), ``ci`` ``[lo, hi]`` (the ``1 - alpha`` percentile interval, resampling items),
    ``mcnemar_p`` (exact two-sided McNemar), ``b``/``c`` (items only A / only B gets right) and ``n``.
    The difference is significant at ``1 - alpha`` when the interval excludes 0.
    """
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    test = mcnemar(a, b)  # also checks that the vectors pair up
    d = a.astype(np.float64) - b.astype(np.float64)
    interval = bootstrap_interval(lambda idx: float(d[idx].mean()) if len(d) else float("nan"), len(d),
                                  resamples=n_boot, confidence=1 - alpha, seed=seed)
    return {"diff": interval.estimate, "ci": [interval.low, interval.high], "mcnemar_p": test["p_value"],
            "b": test["b"], "c": test["c"], "n": int(len(d))}
