"""``pbt``: population-based training on the training loop's checkpoints and events.

Each round every member resumes from its newest checkpoint and trains to the next ready point, where a
``STEP_END`` callback stops the loop, so the loop evaluates and checkpoints as at any stop. Members then
exploit (the bottom quantile copies a top member's checkpoint file) and explore (new hyperparameters near the
copied ones), and the next round resumes them: a resumed run takes its new ``lr``/``weight_decay`` through
the loop's own resume path, other optimizer hyperparameters through a ``FIT_START`` callback.

    result = pbt(model_fn, train_data, PBTConfig(space={"lr": Param(kind="float", low=1e-4, high=1e-1, log=True)},
                                                 population=4, interval_steps=50, total_steps=400),
                 eval_data=val, workdir="runs/pbt")
    result.best.metric, result.best.params, result.events  # every exploit/explore
"""

from __future__ import annotations

import logging
import math
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from nnforge.errors import ConfigError
from nnforge.hardware import EnergyMeter, energy_source
from nnforge.search._space import Param, suggest
from nnforge.search.pbt.config import MANAGED_TRAIN_FIELDS, PBTConfig
from nnforge.search.pbt.explore import explore
from nnforge.train import CallbackFn, Event, TrainConfig, TrainingDivergedError, TrainState, fit, latest_checkpoint

__all__ = ["pbt", "PBTResult", "PBTMember", "PBTEvent"]

log = logging.getLogger(__name__)

ModelFn = Callable[[], nn.Module]
OptimizerFn = Callable[[nn.Module, dict[str, Any]], torch.optim.Optimizer]


@dataclass
class PBTEvent:
    """One exploit/explore: ``member`` took ``source``'s checkpoint at ``step`` and moved its hyperparameters."""

    step: int
    member: int
    source: int
    member_metric: float
    source_metric: float
    old_params: dict[str, Any]
    new_params: dict[str, Any]


@dataclass
class PBTMember:
    """A member's state: its hyperparameters, the metric at each ready point, where its checkpoints live."""

    index: int
    params: dict[str, Any]
    checkpoint_dir: Path
    metric: float = math.nan
    history: list[dict[str, Any]] = field(default_factory=list)  # {"step", "metric", "params"} per ready point
    diverged_at: list[int] = field(default_factory=list)
    energy_j: float = 0.0  # over every interval this member trained (EnergyMeter; the source is the result's)

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "params": self.params, "metric": self.metric, "history": self.history,
                "diverged_at": self.diverged_at, "checkpoint_dir": str(self.checkpoint_dir),
                "energy_j": self.energy_j}


@dataclass
class PBTResult:
    """The population after ``total_steps``: ``best`` member (by the final metric) and every exploit/explore."""

    config: PBTConfig
    members: list[PBTMember]
    events: list[PBTEvent]
    total_train_steps: int  # optimizer steps over all members (population × total_steps)
    energy_source: str = "estimate"  # "rapl" or "estimate" (nnforge.hardware.EnergyMeter)

    @property
    def energy_j(self) -> float:
        """Energy of the whole population's training (labelled by ``energy_source``)."""
        return sum(m.energy_j for m in self.members)

    @property
    def best(self) -> PBTMember:
        sign = 1.0 if self.config.direction == "minimize" else -1.0
        return min(self.members, key=lambda m: sign * m.metric if math.isfinite(m.metric) else math.inf)

    @property
    def best_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.best.checkpoint_dir)

    def to_dict(self) -> dict[str, Any]:
        best = self.best
        return {"config": self.config.to_dict(), "best_member": best.index, "best_metric": best.metric,
                "best_params": best.params, "total_train_steps": self.total_train_steps,
                "energy_j": self.energy_j, "energy_source": self.energy_source,
                "members": [m.to_dict() for m in self.members], "events": [asdict(e) for e in self.events]}


# --- sampling -------------------------------------------------------------------------------------------

def _sampler(seed: int) -> Callable[[Mapping[str, Param]], dict[str, Any]]:
    """Draws of a space through Optuna's random sampler and the search's own ``suggest`` (conditions included)."""
    from nnforge.search._optuna import optuna

    study = optuna().create_study(sampler=optuna().samplers.RandomSampler(seed=seed))
    return lambda space: suggest(study.ask(), space)


# --- one member's interval ------------------------------------------------------------------------------

def _split(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TrainConfig fields, optimizer param-group options) of a member's hyperparameters."""
    fields = set(TrainConfig.model_fields)
    return ({k: v for k, v in params.items() if k in fields}, {k: v for k, v in params.items() if k not in fields})


def _set_group_options(options: dict[str, Any]) -> CallbackFn:
    def callback(event: Event, state: TrainState) -> None:
        if event != Event.FIT_START or not options:
            return
        groups = state.optimizer.param_groups
        missing = [k for k in options if not any(k in g for g in groups)]
        if missing:
            raise ConfigError(f"PBT hyperparameters {missing} are neither TrainConfig fields nor options of the "
                              f"optimizer's param groups (they have {sorted(groups[0])}); rename them or pass an "
                              "optimizer_fn whose optimizer takes them")
        for g in groups:
            g.update({k: v for k, v in options.items() if k in g})
    return callback


def _stop_at(step: int) -> CallbackFn:
    def callback(event: Event, state: TrainState) -> None:
        if event == Event.STEP_END and state.step >= step and not state.stop_training:
            state.stop_training, state.stop_reason = True, f"PBT ready point at step {step}"
    return callback


def _train_interval(member: PBTMember, until: int, config: PBTConfig, model_fn: ModelFn, train_data: Any,
                    eval_data: Any, fit_kwargs: dict[str, Any], callbacks: Sequence[CallbackFn],
                    optimizer_fn: OptimizerFn | None) -> float:
    """Train ``member`` from its newest checkpoint to step ``until``; the evaluation metric there (inf if the
    loss diverged: such a member is the first to be replaced)."""
    train_fields, group_options = _split(member.params)
    base = config.train.model_dump(exclude=set(MANAGED_TRAIN_FIELDS))
    train = TrainConfig(**{**base, **train_fields, "max_steps": config.total_steps, "seed": config.seed + member.index,
                           "checkpoint_dir": str(member.checkpoint_dir)})
    model = model_fn()
    optimizer = (lambda m: optimizer_fn(m, dict(member.params))) if optimizer_fn else None
    resume = latest_checkpoint(member.checkpoint_dir)
    meter = EnergyMeter().start()
    try:
        result = fit(model, train_data, config=train, optimizer=optimizer, eval_data=eval_data,
                     callbacks=[*callbacks, _set_group_options(group_options), _stop_at(until)],
                     resume_from=resume, **fit_kwargs)
    except TrainingDivergedError as exc:
        log.warning("PBT member %d diverged before step %d: %s", member.index, until, exc)
        member.diverged_at.append(until)
        return math.inf if config.direction == "minimize" else -math.inf
    finally:
        member.energy_j += meter.stop().joules
    if not result.evals or config.metric not in result.evals[-1]:
        raise ConfigError(f"PBT ranks members by the evaluation metric {config.metric!r}, but the evaluation gave "
                          f"{sorted(result.evals[-1]) if result.evals else 'nothing (pass eval_data)'}; pass a "
                          "metric_fn that returns it or set metric to one of those")
    return float(result.evals[-1][config.metric])


# --- exploit and explore --------------------------------------------------------------------------------

def _copy_checkpoint(source: PBTMember, target: PBTMember) -> None:
    """Replace ``target``'s checkpoints by ``source``'s newest (atomically, under the same file name)."""
    path = latest_checkpoint(source.checkpoint_dir)
    if path is None:
        raise ConfigError(f"PBT member {source.index} has no checkpoint in {source.checkpoint_dir} to copy")
    for old in target.checkpoint_dir.glob("step-*.safetensors"):
        old.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".copy", dir=target.checkpoint_dir)
    os.close(fd)
    shutil.copyfile(path, tmp)
    os.replace(tmp, target.checkpoint_dir / path.name)


def _exploit_explore(members: list[PBTMember], step: int, config: PBTConfig, rng: random.Random,
                     fresh: Callable[[Mapping[str, Param]], dict[str, Any]]) -> list[PBTEvent]:
    sign = 1.0 if config.direction == "minimize" else -1.0
    ranked = sorted(members, key=lambda m: (sign * m.metric, m.index))  # best first; inf (diverged) last
    cut = max(1, math.ceil(config.quantile * len(members)))
    top, bottom = ranked[:cut], ranked[-cut:]
    events = []
    for member in bottom:
        source = rng.choice(top)
        if source is member or not sign * source.metric < sign * member.metric:
            continue  # tied with the top: nothing better to copy
        _copy_checkpoint(source, member)
        new = explore(config.space, source.params, rng=rng, factors=config.perturb_factors,
                      resample_probability=config.resample_probability, fresh=fresh)
        events.append(PBTEvent(step, member.index, source.index, member.metric, source.metric, member.params, new))
        log.info("PBT step %d: member %d (%s %.4g) copies member %d (%.4g); %s -> %s", step, member.index,
                 config.metric, member.metric, source.index, source.metric, member.params, new)
        member.params, member.metric = new, source.metric
    return events


# --- the population -------------------------------------------------------------------------------------

def pbt(model_fn: ModelFn, train_data: Any, config: PBTConfig, *, workdir: str | os.PathLike[str],
        eval_data: Any, optimizer_fn: OptimizerFn | None = None, loss_fn: Any = None, metric_fn: Any = None,
        callbacks: Sequence[CallbackFn] = ()) -> PBTResult:
    """Train a population with PBT; every member's checkpoints live under ``workdir/member-NN``.

    Args:
        model_fn: builds a fresh model (called once per member and round; the weights come from checkpoints).
        train_data, eval_data, loss_fn, metric_fn, callbacks: as :func:`nnforge.train.fit` (``eval_data`` is
            required: members are ranked by its ``config.metric``).
        optimizer_fn: ``optimizer_fn(model, params)`` builds a member's optimizer from its hyperparameters;
            default the loop's AdamW from ``lr``/``weight_decay``.

    Returns:
        the population, its best member and every exploit/explore event. Deterministic for a given seed and data.
    """
    if eval_data is None:
        raise ConfigError("pbt needs eval_data: members are ranked by an evaluation metric at each ready point")
    root = Path(workdir)
    fresh = _sampler(config.seed)
    rng = random.Random(config.seed)
    members = []
    for i in range(config.population):
        folder = root / f"member-{i:02d}"
        if folder.exists() and any(folder.iterdir()):
            raise ConfigError(f"{folder}: a PBT member folder is not empty; give pbt a new workdir")
        folder.mkdir(parents=True, exist_ok=True)
        members.append(PBTMember(i, fresh(config.space), folder))
    fit_kwargs = {"loss_fn": loss_fn, "metric_fn": metric_fn}
    events: list[PBTEvent] = []
    ready = config.ready_steps
    for step in ready:
        for m in members:
            m.metric = _train_interval(m, step, config, model_fn, train_data, eval_data, fit_kwargs, callbacks,
                                       optimizer_fn)
            m.history.append({"step": step, "metric": m.metric, "params": dict(m.params)})
        if step != ready[-1]:
            events += _exploit_explore(members, step, config, rng, fresh)
    return PBTResult(config, members, events, config.population * config.total_steps, energy_source())
