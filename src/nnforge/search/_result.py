"""What a search returns: every trial's record, the best feasible trial(s), parameter importances."""

from __future__ import annotations

import importlib.util
import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from nnforge.search._objectives import Objective
from nnforge.search._optuna import optuna
from nnforge.search._study import superseded
from nnforge.search._trial import ERROR_KEY, FEASIBLE_KEY, METRICS_KEY, RESERVED_KEYS

__all__ = ["TrialRecord", "SearchResult", "SearchProgress", "records", "best_trials", "importances"]

log = logging.getLogger("nnforge.search")

_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}


@dataclass(frozen=True)
class TrialRecord:
    """One trial as the search saw it.

    ``state`` is ``complete``, ``pruned``, ``failed``, ``running``, ``waiting`` or ``retried`` (failed because
    its worker died, and run again as a later trial with the same parameters). ``values`` are the objective
    values in the order of ``SearchConfig.objectives`` (complete trials only). ``feasible`` says whether the
    constraints held (None for a failed trial).
    """

    number: int
    state: str
    params: dict[str, Any]
    metrics: dict[str, float]
    values: list[float] | None
    duration_s: float | None
    feasible: bool | None
    error: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _json_ready(asdict(self))


@dataclass(frozen=True)
class SearchProgress:
    """A snapshot for progress displays: counts by state, the best trial(s) so far, and the trials that
    finished since the previous snapshot (``new``: e.g. to record each trial as it ends)."""

    total: int
    complete: int
    pruned: int
    failed: int
    running: int
    best: list[TrialRecord]
    new: list[TrialRecord] = field(default_factory=list)

    @property
    def finished(self) -> int:
        return self.complete + self.pruned + self.failed


@dataclass(frozen=True)
class SearchResult:
    """The outcome of :func:`~nnforge.search.search`.

    ``best`` is the best feasible trial in a one-element list for one objective, the Pareto front of the
    feasible complete trials (sorted by the first objective) for several; empty when no trial is feasible.
    ``importances`` maps each objective's metric to ``{parameter: importance}`` (fANOVA, or PED-ANOVA without
    scikit-learn; summing to 1), empty when too few trials completed to estimate them.
    """

    study_name: str
    storage: str
    objectives: list[Objective]
    constraints: list[str]
    trials: list[TrialRecord]
    best: list[TrialRecord]
    importances: dict[str, dict[str, float]]

    @property
    def best_trial(self) -> TrialRecord | None:
        """The first of :attr:`best` (the best trial for one objective), or None."""
        return self.best[0] if self.best else None

    def count(self, state: str) -> int:
        return sum(t.state == state for t in self.trials)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (non-finite numbers become None)."""
        return _json_ready({
            "study_name": self.study_name, "storage": self.storage,
            "objectives": [o.model_dump() for o in self.objectives], "constraints": list(self.constraints),
            "counts": {s: self.count(s) for s in ("complete", "pruned", "failed", "retried", "running", "waiting")},
            "trials": [t.to_dict() for t in self.trials], "best": [t.number for t in self.best],
            "importances": self.importances,
        })


def _json_ready(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    return obj


def records(study: Any) -> list[TrialRecord]:
    """Every trial of the study as a :class:`TrialRecord`, by number."""
    trials = study.get_trials(deepcopy=False)
    retried = superseded(trials)
    out = []
    for t in trials:
        state = "retried" if t.number in retried else _STATES.get(t.state.name, t.state.name.lower())
        duration = t.duration.total_seconds() if t.duration is not None else None
        attrs = {k: v for k, v in t.user_attrs.items() if k not in RESERVED_KEYS}
        out.append(TrialRecord(
            number=t.number, state=state, params=dict(t.params), metrics=dict(t.user_attrs.get(METRICS_KEY, {})),
            values=list(t.values) if state == "complete" and t.values is not None else None,
            duration_s=duration, feasible=t.user_attrs.get(FEASIBLE_KEY), error=t.user_attrs.get(ERROR_KEY),
            attrs=attrs))
    return sorted(out, key=lambda r: r.number)


def _dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def best_trials(trials: Sequence[TrialRecord], objectives: Sequence[Objective]) -> list[TrialRecord]:
    """The best feasible complete trial (one objective) or the feasible Pareto front (several)."""
    signs = [1.0 if o.direction == "minimize" else -1.0 for o in objectives]
    candidates = [t for t in trials if t.state == "complete" and t.feasible and t.values is not None]
    keyed = [([s * v for s, v in zip(signs, t.values or [], strict=True)], t) for t in candidates]
    if len(objectives) == 1:
        return [min(keyed, key=lambda kt: (kt[0][0], kt[1].number))[1]] if keyed else []
    front = [t for k, t in keyed if not any(_dominates(k2, k) for k2, _ in keyed)]
    return sorted(front, key=lambda t: ((t.values or [0.0])[0] * signs[0], t.number))


def importances(study: Any, objectives: Sequence[Objective], *, method: str | None = None) -> dict[str, dict[str, float]]:
    """Parameter importances per objective (normalised to sum to 1); {} when they cannot be estimated yet.

    Args:
        method: ``"fanova"`` (Optuna's fANOVA; needs scikit-learn) or ``"ped-anova"`` (Optuna's PED-ANOVA, no
            extra dependency); None: fANOVA where scikit-learn is installed, else PED-ANOVA.
    """
    mod = optuna()
    if method is None:
        method = "fanova" if importlib.util.find_spec("sklearn") is not None else "ped-anova"
    complete = study.get_trials(deepcopy=False, states=(mod.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}
    out: dict[str, dict[str, float]] = {}
    for i, obj in enumerate(objectives):
        evaluator = (mod.importance.FanovaImportanceEvaluator(seed=0) if method == "fanova"
                     else mod.importance.PedAnovaImportanceEvaluator())
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                found = mod.importance.get_param_importances(
                    study, evaluator=evaluator, target=lambda t, i=i: t.values[i], normalize=True)
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:  # e.g. no parameter varied
            log.info("parameter importances (%s) for %r not estimated: %s", method, obj.metric, exc)
            continue
        out[obj.metric] = {k: float(v) for k, v in found.items()}
    return out
