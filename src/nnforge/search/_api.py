"""``search(trial_fn, config)``: run a study of ``config.trials`` trials on a journal file or PostgreSQL.

    from nnforge.search import Objective, Param, SearchConfig, search

    def trial_fn(ctx):                        # module-level, so worker processes can import it
        x, y = ctx.params["x"], ctx.params["y"]
        return {"loss": (x - 1) ** 2 + (y + 2) ** 2}

    config = SearchConfig(space={"x": Param(kind="float", low=-5, high=5), "y": Param(kind="float", low=-5, high=5)},
                          objectives=[Objective(metric="loss")], trials=40, sampler="tpe")
    result = search(trial_fn, config, storage="study.journal", workers=2)
    result.best_trial.params
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import sys
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np
from pydantic import Field, field_validator, model_validator

from nnforge.config import Config, config_type
from nnforge.errors import ConfigError, StepFailedError
from nnforge.search._objectives import Constraint, Objective
from nnforge.search._optuna import optuna
from nnforge.search._result import SearchProgress, SearchResult, best_trials, importances, records
from nnforge.search._space import Param, check_space
from nnforge.search._study import open_pruning_study, open_storage, open_study, storage_label, work
from nnforge.search._trial import TrialFn, run_trial
from nnforge.search.pruners import PRUNERS
from nnforge.search.samplers import SAMPLERS, SamplerContext

__all__ = ["SearchConfig", "search"]

log = logging.getLogger("nnforge.search")

ProgressFn = Callable[[SearchProgress], None]


@config_type("search")
class SearchConfig(Config):
    """A study: the space, what to optimise under which constraints, how to sample and prune, how long.

    ``sampler`` names an entry of :data:`~nnforge.search.SAMPLERS` (``random``, ``tpe``, ``nsga2``, …) and
    ``pruner`` one of :data:`~nnforge.search.PRUNERS` (``none``, ``median``, ``successive-halving``,
    ``hyperband``); their ``*_options`` go to the Optuna class as keyword arguments. With several objectives a
    pruner ranks the intermediate values of the first (Optuna's pruners know one direction). ``storage`` is a journal
    file path or a ``postgresql://`` URL (``search(storage=...)`` overrides it). A study with the same
    ``study_name`` on the same storage resumes.
    """

    space: dict[str, Param]
    objectives: list[Objective] = Field(min_length=1)
    constraints: list[str] = []
    sampler: str = "tpe"
    sampler_options: dict[str, Any] = {}
    pruner: str = "none"
    pruner_options: dict[str, Any] = {}
    trials: int = Field(default=20, ge=1)
    timeout_s: float | None = Field(default=None, gt=0)
    seed: int | None = 0
    study_name: str = Field(default="search", min_length=1)
    storage: str | None = None

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, Param]) -> dict[str, Param]:
        try:
            check_space(space, where="")  # pydantic puts 'space: ' in front
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return space

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, constraints: list[str]) -> list[str]:
        for i, text in enumerate(constraints):
            try:
                Constraint.parse(text, where=f"constraints[{i}]")
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return constraints

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, name: str) -> str:
        if name not in SAMPLERS:
            raise ValueError(SAMPLERS.unknown_message(name))
        return name

    @field_validator("pruner")
    @classmethod
    def _pruner(cls, name: str) -> str:
        if name not in PRUNERS:
            raise ValueError(PRUNERS.unknown_message(name))
        return name

    @model_validator(mode="after")
    def _check(self) -> SearchConfig:
        metrics = [o.metric for o in self.objectives]
        if len(set(metrics)) != len(metrics):
            raise ValueError(f"objectives: each metric may appear once. Got {metrics}")
        return self

    @cached_property
    def parsed_constraints(self) -> list[Constraint]:
        """The constraints, parsed."""
        return [Constraint.parse(text) for text in self.constraints]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]


def _worker_seed(seed: int | None, worker: int, done: int) -> int | None:
    """Each worker (and each resumption) draws its own stream; a fresh single-worker study uses ``seed`` itself."""
    if seed is None:
        return None
    if worker == 0 and done == 0:
        return seed
    return int(np.random.SeedSequence([seed, worker, done]).generate_state(1)[0])


def _build(config: SearchConfig, *, worker: int, done: int) -> tuple[Any, Any]:
    context = SamplerContext(seed=_worker_seed(config.seed, worker, done), directions=config.directions,
                             constraints=[str(c) for c in config.parsed_constraints], space=config.space)
    sampler = SAMPLERS.get(config.sampler)(dict(config.sampler_options), context)
    pruner = PRUNERS.get(config.pruner)(dict(config.pruner_options))
    return sampler, pruner


def _open(config: SearchConfig, target: str, *, worker: int) -> tuple[Any, Any | None]:
    """The study (with this worker's sampler) and, for several objectives with a pruner, its pruning twin."""
    storage = open_storage(target)
    probe_sampler, pruner = _build(config, worker=worker, done=0)
    study = open_study(storage, config.study_name, config.directions, config.trials, sampler=probe_sampler,
                       pruner=pruner, config_json=config.model_dump(mode="json"))
    done = len(study.get_trials(deepcopy=False, states=tuple(
        s for s in optuna().trial.TrialState if s.is_finished())))
    if done or worker:
        study.sampler = _build(config, worker=worker, done=done)[0]
    twin = None
    if len(config.objectives) > 1 and config.pruner != "none":
        twin = open_pruning_study(storage, config.study_name, config.directions[0], pruner)
    return study, twin


def _runner(study: Any, twin: Any | None, trial_fn: TrialFn, config: SearchConfig) -> Callable[[Any], None]:
    return lambda trial: run_trial(study, trial, trial_fn, config, pruning_study=twin)


_FINISHED = ("complete", "pruned", "failed")


class _Progress:
    """Snapshots for the caller's progress function; each trial appears in exactly one snapshot's ``new``."""

    def __init__(self, study: Any, config: SearchConfig, fn: ProgressFn | None) -> None:
        self.study, self.config, self.fn = study, config, fn
        self.reported: set[int] = set()  # earlier runs' trials (a resumed study) are not new
        if fn is not None:
            self.reported = {r.number for r in records(study) if r.state in _FINISHED}
        self.seen: tuple[int, int] | None = None

    def __call__(self) -> None:
        if self.fn is None:
            return
        recs = records(self.study)
        new = [r for r in recs if r.state in _FINISHED and r.number not in self.reported]
        count = {s: sum(r.state == s for r in recs) for s in ("complete", "pruned", "failed", "running")}
        if not new and self.seen == (len(self.reported), count["running"]):
            return
        self.reported |= {r.number for r in new}
        self.seen = (len(self.reported), count["running"])
        self.fn(SearchProgress(total=self.config.trials, **count, best=best_trials(recs, self.config.objectives),
                               new=new))


def _worker_main(trial_fn: TrialFn, config: SearchConfig, target: str, worker: int, deadline: float | None,
                 threads: int, errors: Any) -> None:
    """A worker process: the same study, trials until none is left; its error goes back to the parent."""
    torch = sys.modules.get("torch")  # imported with trial_fn's module if the trials use it
    if torch is not None:
        torch.set_num_threads(threads)  # this process is ours: share the cores instead of oversubscribing them
    try:
        study, twin = _open(config, target, worker=worker)
        work(study, _runner(study, twin, trial_fn, config),
             deadline=None if deadline is None else time.monotonic() + (deadline - time.time()))
    except BaseException as exc:
        errors.put((isinstance(exc, ConfigError), f"{type(exc).__name__}: {exc}"))
        raise


def _check_picklable(trial_fn: TrialFn) -> None:
    try:
        pickle.dumps(trial_fn)  # what spawning does to it; a lambda or a nested function fails here, clearly
    except (pickle.PicklingError, AttributeError, TypeError) as exc:
        raise ConfigError(f"search: with workers > 1 the trial function must be importable by the worker processes "
                          f"(a module-level function or a picklable object); {trial_fn!r} is not ({exc})") from None


def _pending(study: Any) -> bool:
    states = optuna().trial.TrialState
    return bool(study.get_trials(deepcopy=False, states=(states.WAITING, states.RUNNING)))


def _run_workers(trial_fn: TrialFn, config: SearchConfig, target: str, study: Any, workers: int,
                 deadline: float | None, progress: Callable[[], None]) -> None:
    ctx = multiprocessing.get_context("spawn")  # fork would copy torch's thread pools and locks
    errors = ctx.Queue()
    threads = max(1, (os.cpu_count() or 1) // workers)
    procs = [ctx.Process(target=_worker_main, args=(trial_fn, config, target, i + 1, deadline, threads, errors),
                         name=f"nnforge-search-worker-{i + 1}") for i in range(workers)]
    for p in procs:
        p.start()
    try:
        # every process is polled each round (is_alive reaps a dead one): with any()'s short cut, a dead worker
        # behind a live one stayed a zombie, which looked alive to the others waiting to retry its trial
        while any([p.is_alive() for p in procs]):
            time.sleep(0.5)
            progress()
    finally:
        for p in procs:
            if p.is_alive():  # interrupted: stop the workers; their trials are retried on resume
                p.terminate()
            p.join()
    reported = []
    while not errors.empty():
        reported.append(errors.get())
    if any(is_config for is_config, _ in reported):
        raise ConfigError(next(msg for is_config, msg in reported if is_config))
    bad = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    if bad and not reported and not _pending(study):  # killed, and the others retried its trial and finished
        log.warning("search workers died (%s); the other workers retried their trials and finished the study",
                    ", ".join(f"{n}, exit code {c}" for n, c in bad))
        return
    if bad:
        why = "; ".join(msg for _, msg in reported) or "see the log above"
        raise StepFailedError(f"search workers failed: {', '.join(f'{n} (exit code {c})' for n, c in bad)}: {why}. "
                              f"The study is kept: run the search again to resume it")


def search(trial_fn: TrialFn, config: SearchConfig, *, storage: str | os.PathLike[str] | None = None,
           workers: int = 1, progress: ProgressFn | None = None) -> SearchResult:
    """Run (or resume) the study ``config`` describes, calling ``trial_fn(ctx)`` once per trial.

    Args:
        trial_fn: ``trial_fn(ctx: TrialContext) -> dict[str, float]``, the trial's metrics by name. With
            ``workers > 1`` it must be importable (a module-level function): each worker process imports it.
        config: the study.
        storage: a journal file path or a ``postgresql://`` URL; default ``config.storage``.
        workers: processes running trials at once on the storage (1: in this process).
        progress: called with a :class:`SearchProgress` after each finished trial (with several workers, on
            each change seen by polling the storage); trials finished by earlier runs of a resumed study are
            not ``new``.

    Returns:
        every trial of the study (earlier runs' too, when resumed), the best, and parameter importances.

    Raises:
        ConfigError: no storage, an unsupported URL, options the sampler/pruner rejects, or a trial that
            returned no value for an objective or constraint metric.
        StepFailedError: a worker process failed.
    """
    target = storage if storage is not None else config.storage
    if target is None:
        raise ConfigError("search: no storage; pass storage='study.journal' (a journal file) or a postgresql:// URL, "
                          "or set SearchConfig.storage")
    if workers < 1:
        raise ConfigError(f"The 'workers' parameter of search must be an int >= 1. Got {workers} instead.")
    if workers > 1:
        _check_picklable(trial_fn)
    target = os.fspath(target)
    deadline = None if config.timeout_s is None else time.time() + config.timeout_s
    study, twin = _open(config, target, worker=0)
    report = _Progress(study, config, progress)
    if workers == 1:
        work(study, _runner(study, twin, trial_fn, config), on_finished=report,
             deadline=None if config.timeout_s is None else time.monotonic() + config.timeout_s)
    else:
        _run_workers(trial_fn, config, target, study, workers, deadline, report)
    report()
    recs = records(study)
    best = best_trials(recs, config.objectives)
    return SearchResult(study_name=config.study_name, storage=storage_label(target), objectives=list(config.objectives),
                        constraints=list(config.constraints), trials=recs, best=best,
                        importances=importances(study, config.objectives))
