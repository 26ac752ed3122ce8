"""One trial: the context a trial function receives, and running it to an outcome the study records.

A trial function ``trial_fn(ctx) -> dict[str, float]`` reads ``ctx.params``, does the work (usually trains and
measures a model) and returns its metrics by name. Objectives and constraints are read from those metrics;
intermediate values go to the pruner through ``ctx.report`` or ``ctx.train_callback()``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from nnforge.errors import ConfigError
from nnforge.search._objectives import constraint_violations, objective_values
from nnforge.search._optuna import optuna
from nnforge.search._space import suggest
from nnforge.search._study import abandon, trial_storage

if TYPE_CHECKING:
    from nnforge.search._api import SearchConfig
    from nnforge.train import CallbackFn, Event, TrainState

__all__ = ["TrialContext", "TrialFn", "run_trial", "METRICS_KEY", "FEASIBLE_KEY", "ERROR_KEY"]

log = logging.getLogger("nnforge.search")

METRICS_KEY = "metrics"  # trial user attrs the search writes
FEASIBLE_KEY = "feasible"
ERROR_KEY = "error"
CURVE_KEY = "intermediate"  # several objectives: the reported curve (Optuna keeps one only for one objective)
RESERVED_KEYS = (METRICS_KEY, FEASIBLE_KEY, ERROR_KEY, CURVE_KEY)


class TrialContext:
    """What a trial function receives: the trial's number and sampled parameters, and ways to talk to the study.

    Attributes:
        number: the trial's number in the study (0, 1, …).
        params: the sampled values by parameter name (inactive conditional parameters absent).
        pruned: set once the pruner has stopped this trial (the trial is recorded as pruned).
    """

    def __init__(self, trial: Any, params: dict[str, Any], *, pruning_trial: Any | None) -> None:
        self._trial = trial
        self._pruning = pruning_trial
        self.number: int = trial.number
        self.params = params
        self.pruned = False
        self._curve: dict[int, float] = {}

    def report(self, step: int, value: float) -> None:
        """Report an intermediate value of the (first) objective at ``step`` (e.g. a validation loss).

        Raises:
            optuna.TrialPruned: the pruner says this trial should stop; let it propagate (the search records
                the trial as pruned) or catch it to clean up first.
        """
        value = float(value)
        self._curve[int(step)] = value
        if self._pruning is not self._trial:  # several objectives: Optuna keeps no curve, so the search does
            self._trial.set_user_attr(CURVE_KEY, {str(k): v for k, v in sorted(self._curve.items())})
        if self._pruning is None:
            return
        self._pruning.report(value, int(step))
        if self._pruning.should_prune():
            self.pruned = True
            raise optuna().TrialPruned(f"trial {self.number} pruned at step {step} (value {value:.6g})")

    def train_callback(self, metric: str = "val_loss") -> CallbackFn:
        """A :func:`nnforge.train.fit` callback reporting ``metric`` at every evaluation; stops training when pruned.

        ``val_loss`` (and ``val_<name>``) is the loop's evaluation ``loss`` (``<name>``); other names are looked up
        as they are. When the pruner stops the trial the loop ends at once (``stop_training``) and
        :attr:`pruned` is set; the trial is then recorded as pruned whatever the trial function returns, so it
        may check ``ctx.pruned`` to skip its remaining measurements.
        """
        from nnforge.train import Event

        report = self.eval_reporter(metric)

        def callback(event: Event, state: TrainState) -> None:
            if event is Event.EVAL_END and report(state.step, state.metrics):
                state.stop_training = True
                state.stop_reason = f"pruned by the search at step {state.step}"

        callback.__name__ = f"report_{metric}"
        return callback

    def eval_reporter(self, metric: str = "val_loss") -> Callable[[int, Mapping[str, float]], bool]:
        """``report(step, metrics) -> stop``: for any loop that evaluates (``finetune_classifier``'s ``on_eval``,
        your own): reports ``metric`` (looked up as :meth:`train_callback` does) and returns True once the
        pruner has stopped the trial, instead of raising."""

        def report(step: int, metrics: Mapping[str, float]) -> bool:
            if self.pruned:
                return True
            try:
                self.report(step, _eval_metric(metrics, metric))
            except optuna().TrialPruned:
                return True
            return False

        report.__name__ = f"report_{metric}"
        return report

    def set_attr(self, key: str, value: Any) -> None:
        """Store a JSON-serialisable value with the trial (shown in results and reports)."""
        if key in RESERVED_KEYS:
            raise ConfigError(f"trial attribute {key!r} is written by the search itself; use another name")
        self._trial.set_user_attr(key, value)


def _eval_metric(metrics: Mapping[str, float], name: str) -> float:
    if name in metrics:
        return float(metrics[name])
    if name.startswith("val_") and name[4:] in metrics:
        return float(metrics[name[4:]])
    raise ConfigError(f"train_callback: the evaluation has no metric {name!r} (it has {sorted(metrics)}); "
                      f"use 'val_loss' for the evaluation loss or a name metric_fn returns")


TrialFn = Callable[[TrialContext], Mapping[str, float]]


def _clean_metrics(raw: Any, number: int) -> dict[str, float]:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"trial {number}: the trial function must return a dict of metrics. Got {type(raw).__name__}")
    metrics = {}
    for name, value in raw.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"trial {number}: metric {name!r} must be a number. Got {value!r}")
        metrics[str(name)] = float(value)
    return metrics


def run_trial(study: Any, trial: Any, trial_fn: TrialFn, config: SearchConfig, *,
              pruning_study: Any | None = None) -> None:
    """Run ``trial_fn`` on a claimed trial and tell the study the outcome (complete, pruned or failed).

    A trial function that raises fails its trial (logged, the search goes on). A trial that breaks the
    contract (no dict, a missing objective or constraint metric) is failed and the ConfigError raised.

    Args:
        pruning_study: several objectives with a pruner: the single-objective study of the first objective's
            intermediate values that the pruner ranks (Optuna's pruners need one direction); each trial gets a
            twin there.
    """
    twin = pruning_study.ask() if pruning_study is not None else None
    if twin is not None:
        twin.set_user_attr("trial", trial.number)
    try:
        _run(study, trial, trial_fn, config, twin)
    finally:
        if twin is not None:
            _tell_twin(pruning_study, twin, trial_storage(study).get_trial(trial._trial_id))


def _tell_twin(pruning_study: Any, twin: Any, frozen: Any) -> None:
    mod = optuna()
    state = frozen.state if frozen.state.is_finished() else mod.trial.TrialState.FAIL
    if state == mod.trial.TrialState.COMPLETE:
        pruning_study.tell(twin, frozen.values[0])
    else:
        pruning_study.tell(twin, state=state)


def _run(study: Any, trial: Any, trial_fn: TrialFn, config: SearchConfig, twin: Any | None) -> None:
    mod = optuna()
    state, values, metrics, error = mod.trial.TrialState.COMPLETE, None, {}, None
    ctx: TrialContext | None = None
    t0 = time.perf_counter()
    pruning = trial if len(config.objectives) == 1 else twin
    try:
        ctx = TrialContext(trial, suggest(trial, config.space), pruning_trial=pruning)
        metrics = _clean_metrics(trial_fn(ctx), trial.number)
        if ctx.pruned:
            state = mod.trial.TrialState.PRUNED
        else:
            values = objective_values(config.objectives, metrics, number=trial.number)
            constraint_violations(config.parsed_constraints, metrics, number=trial.number, strict=True)
            bad = [o.metric for o, v in zip(config.objectives, values, strict=True) if not math.isfinite(v)]
            if bad:
                state, values, error = mod.trial.TrialState.FAIL, None, f"objective {bad} is not finite"
    except mod.TrialPruned:
        state = mod.trial.TrialState.PRUNED
    except ConfigError as exc:
        _tell(study, trial, mod.trial.TrialState.FAIL, None, metrics, str(exc), config)
        raise
    except Exception as exc:  # a failing trial is a result (diverged, out of memory), not the end of the study
        state, error = mod.trial.TrialState.FAIL, f"{type(exc).__name__}: {exc}"
        log.warning("trial %d failed after %.1f s: %s", trial.number, time.perf_counter() - t0, error)
    except KeyboardInterrupt:
        abandon(study, trial)  # not the trial's fault: it runs again when the search resumes
        raise
    _tell(study, trial, state, values, metrics, error, config)


def _tell(study: Any, trial: Any, state: Any, values: list[float] | None, metrics: dict[str, float],
          error: str | None, config: SearchConfig) -> None:
    trial.set_user_attr(METRICS_KEY, metrics)
    violations = constraint_violations(config.parsed_constraints, metrics, number=trial.number, strict=False)
    feasible = all(v <= 0 for v in violations) if state.name != "FAIL" else None
    if state.name != "FAIL":  # what samplers read (Optuna 5: per-trial constraint values, not a penalty)
        for c, v in zip(config.parsed_constraints, violations, strict=True):
            trial.set_constraint(str(c), v)
    trial.set_user_attr(FEASIBLE_KEY, feasible)
    if error is not None:
        trial.set_user_attr(ERROR_KEY, error)
    if state.name == "COMPLETE":
        study.tell(trial, values)
    else:
        study.tell(trial, state=state)
