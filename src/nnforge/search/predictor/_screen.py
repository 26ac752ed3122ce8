"""Screening: predict a candidate's latency before building or training it, and skip it when over the limit."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from nnforge.search.predictor._features import architecture_features
from nnforge.search.predictor._predictor import LatencyPredictor

__all__ = ["ScreenedTrial", "SCREENED_ATTR", "PREDICTED_ATTR"]

SCREENED_ATTR = "screened"  # trial attribute: why the candidate was skipped
PREDICTED_ATTR = "predicted_latency_b1_ms"  # trial attribute: the predictor's latency for the candidate


@dataclass(frozen=True)
class ScreenedTrial:
    """A trial function that runs ``trial_fn`` only for candidates predicted within ``limit_ms``.

    Every trial gets its predicted latency as the attribute ``predicted_latency_b1_ms``. A candidate predicted
    over the limit is neither built nor trained: the trial returns ``skipped`` with ``metric`` set to the
    prediction, so the search's latency constraint (``latency_b1_ms <= limit``) marks it infeasible, and
    its attribute ``screened`` says why. Picklable when ``trial_fn`` is a module-level function, so it works
    with ``search(..., workers=N)``.

    Args:
        trial_fn: the real trial (builds, trains and measures the candidate).
        predictor: a fitted :class:`LatencyPredictor` over :func:`architecture_features`.
        space: the :class:`~nnforge.search.nas.ArchitectureSpace` whose options ``ctx.params`` holds.
        limit_ms: the latency limit, the bound of the search's latency constraint.
        skipped: the other metrics a skipped trial reports (objectives need a number: e.g. the val loss of
            an untrained model); they are recorded, and the trial is infeasible.
        metric: the name of the latency metric.
        fixed: options every candidate is built with (``block_size``, ``vocab_size``).
    """

    trial_fn: Callable[[Any], Mapping[str, float]]
    predictor: LatencyPredictor
    space: Any
    limit_ms: float
    skipped: Mapping[str, float] = field(default_factory=dict)
    metric: str = "latency_b1_ms"
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, ctx: Any) -> Mapping[str, float]:
        features = architecture_features(self.space, ctx.params, **self.fixed)
        predicted = self.predictor.predict(features)
        ctx.set_attr(PREDICTED_ATTR, predicted)
        if predicted <= self.limit_ms:
            return self.trial_fn(ctx)
        ctx.set_attr(SCREENED_ATTR, f"predicted {predicted:.4g} ms > {self.limit_ms:.4g} ms: not built, not trained")
        return {**self.skipped, self.metric: predicted}
