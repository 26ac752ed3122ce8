"""The training loop: :func:`fit`, readable top to bottom.

One loop for every model nnforge trains: gradient accumulation, clipping, lr schedules, bf16 autocast,
evaluation and early stopping, atomic checkpoints with exact resume, a NaN/inf guard, and DDP when
launched by ``torchrun``. Extensions hook the named :class:`~nnforge.train.Event` points.

    from nnforge.train import TrainConfig, TensorBatches, fit
    result = fit(model, TensorBatches(x, y, batch_size=64), config=TrainConfig(max_steps=500))
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnforge.errors import ConfigError, IntegrityError, StepFailedError
from nnforge.train._batches import EVAL, BatchStream, batch_rng, batch_rows, shard_batch, to_device
from nnforge.train._checkpoint import (
    checkpoint_path,
    checkpoint_step,
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temp_files,
    save_checkpoint,
)
from nnforge.train._config import TrainConfig
from nnforge.train._distributed import Distributed, setup
from nnforge.train._events import CallbackFn, Event, TrainState, emit
from nnforge.train._schedule import build_scheduler

__all__ = ["fit", "TrainResult", "TrainingDivergedError", "default_loss", "accuracy"]

log = logging.getLogger("nnforge.train")

LossFn = Callable[[nn.Module, Any], torch.Tensor]
MetricFn = Callable[[nn.Module, Any], Mapping[str, Any]]  # values: floats or 0-dim tensors
OptimizerSpec = torch.optim.Optimizer | Callable[[nn.Module], torch.optim.Optimizer] | None
Data = Callable[[int], Any] | Iterable[Any]


class TrainingDivergedError(StepFailedError):
    """The loss or the gradient norm became NaN or infinite; no update was applied at that step."""


@dataclass
class TrainResult:
    """What a call to :func:`fit` did. ``losses[i]`` and ``lrs[i]`` belong to step ``start_step + i + 1``."""

    steps: int = 0
    start_step: int = 0
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    evals: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    stop_reason: str = ""
    last_checkpoint: Path | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "start_step": self.start_step, "losses": self.losses, "lrs": self.lrs,
                "evals": self.evals, "stopped_early": self.stopped_early, "stop_reason": self.stop_reason,
                "last_checkpoint": str(self.last_checkpoint) if self.last_checkpoint else None,
                "seconds": round(self.seconds, 3)}


def default_loss(model: nn.Module, batch: Any) -> torch.Tensor:
    """Cross-entropy of ``model(inputs)`` against ``targets`` for a batch ``(inputs, targets)``.

    Logits may be (B, C) or (B, T, C) with targets (B,) or (B, T); a model returning ``(logits, ...)``
    works too. A dict batch is passed as keyword arguments and the output's ``loss`` is used.
    """
    if isinstance(batch, Mapping):
        out = model(**batch)
        return out["loss"] if isinstance(out, Mapping) else out.loss
    inputs, targets = batch
    logits = model(inputs)
    if isinstance(logits, tuple):
        logits = logits[0]
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


def accuracy(model: nn.Module, batch: Any) -> dict[str, torch.Tensor]:
    """A ``metric_fn``: the share of rows whose argmax logit is the target, for ``(inputs, targets)``."""
    inputs, targets = batch
    logits = model(inputs)
    logits = logits[0] if isinstance(logits, tuple) else logits
    return {"accuracy": (logits.argmax(-1) == targets).float().mean()}


# --- the run's moving parts ------------------------------------------------------------------------------

@dataclass
class _Run:
    state: TrainState
    ddp_model: nn.Module  # the model itself on one process, its DDP wrapper under torchrun
    loss_fn: LossFn
    callbacks: list[CallbackFn]
    dist: Distributed
    stream: BatchStream = field(init=False)
    optimizer_training: bool = False

    def emit(self, event: Event) -> None:
        emit(self.callbacks, event, self.state)

    def autocast(self) -> AbstractContextManager[Any]:
        if not self.state.config.bf16:
            return nullcontext()
        return torch.autocast(device_type=self.dist.device.type, dtype=torch.bfloat16)

    def optimizer_mode(self, train: bool) -> None:
        """Switch optimizers that keep separate train/eval weights (Schedule-Free) when the mode changes."""
        opt = self.state.optimizer
        if getattr(opt, "requires_train_eval_modes", False) and train != self.optimizer_training:
            opt.train() if train else opt.eval()  # type: ignore[attr-defined]
        self.optimizer_training = train


def fit(model: nn.Module, train_data: Data, *, config: TrainConfig | None = None, optimizer: OptimizerSpec = None,
        eval_data: Data | None = None, loss_fn: LossFn | None = None, metric_fn: MetricFn | None = None,
        callbacks: Sequence[CallbackFn] = (), progress: bool = False,
        resume_from: str | Path | None = None) -> TrainResult:
    """Train ``model`` for ``config.max_steps`` optimizer steps.

    Args:
        model: any module; moved to the config's device and trained in place.
        train_data: a batch function ``batch_fn(index)`` or an iterable of batches (the batch contract is in
            ``nnforge.train._batches``). Under torchrun each batch is the global batch; each rank keeps its slice.
        config: the loop's options (default ``TrainConfig()``).
        optimizer: an optimizer over the model's parameters, a factory ``optimizer(model)``, or None for
            AdamW(lr=config.lr, weight_decay=config.weight_decay).
        eval_data: batches to evaluate on (a batch function needs ``config.eval_batches``).
        loss_fn: ``loss_fn(model, batch) -> scalar loss``; default :func:`default_loss`.
        metric_fn: ``metric_fn(model, batch) -> {name: value}`` added to each evaluation (e.g. :func:`accuracy`);
            values are averaged over evaluation rows and ranks.
        callbacks: functions ``cb(event, state)`` or :class:`~nnforge.train.Callback` objects.
        progress: show a rich progress bar (rank 0 only).
        resume_from: a checkpoint file, or a folder whose newest checkpoint is used.

    Seeds the global torch, numpy and Python RNGs from ``config.seed`` (plus the rank), as training needs,
    and restores them on resume. A batch function runs with those RNGs seeded from ``(seed, index)``
    instead, the same on every rank (``nnforge.train._batches.batch_rng``). Under torchrun it creates (and afterwards destroys) the process group
    unless the caller already made one.

    Raises:
        TrainingDivergedError: a loss or gradient norm was NaN/inf; names the step and the last checkpoint.
        ConfigError, DataError, IntegrityError: bad options, data, or checkpoint.
    """
    config = config or TrainConfig()
    if progress:
        from nnforge.train._progress import ProgressBar

        callbacks = [*callbacks, ProgressBar()]
    dist = setup(config.device)
    clean = False
    try:
        run = _prepare(model, train_data, config, optimizer, loss_fn or default_loss, list(callbacks), dist)
        if config.checkpoint_dir and dist.rank == 0:
            for stale in remove_stale_temp_files(config.checkpoint_dir):
                log.info("removed %s, left by a checkpoint save that did not finish", stale)
        if resume_from is not None:
            _resume(run, Path(resume_from))
        result = _train(run, eval_data, metric_fn)
        clean = True
        return result
    finally:
        dist.close(clean=clean)


def _train(run: _Run, eval_data: Data | None, metric_fn: MetricFn | None) -> TrainResult:
    state, config = run.state, run.state.config
    result = TrainResult(start_step=state.step)
    t0 = time.perf_counter()
    run.emit(Event.FIT_START)
    if not run.stream.is_function and state.batch_in_epoch == 0:
        run.emit(Event.EPOCH_START)
    try:
        _agree_on_stop(run)  # a stop asked at FIT_START / EPOCH_START
        while state.step < config.max_steps and not state.stop_training:
            run.optimizer_mode(train=True)
            run.emit(Event.STEP_START)
            _train_step(run)
            result.losses.append(state.loss)
            result.lrs.append(state.lr)
            run.emit(Event.STEP_END)
            if state.is_main and (state.step % config.log_every == 0 or state.step == config.max_steps):
                log.info("step %d/%d: loss %.4f, lr %.3g, grad norm %.3g", state.step, config.max_steps,
                         state.loss, state.lr, state.grad_norm)
            _agree_on_stop(run)
            last = state.step >= config.max_steps or state.stop_training
            if eval_data is not None and (last or _every(state.step, config.eval_every)):
                _evaluate(run, eval_data, metric_fn)
                result.evals.append({"step": state.step, **state.metrics})
                _early_stopping(state)
                _agree_on_stop(run)  # a stop asked at EVAL_START / EVAL_END decides the checkpoint below
            if config.checkpoint_dir and (last or state.stop_training or _every(state.step, config.checkpoint_every)):
                _save(run)
                _agree_on_stop(run)  # a stop asked at CHECKPOINT ends the loop on every rank
    except BaseException as exc:
        state.error = exc
        raise
    finally:
        run.emit(Event.FIT_END)
    result.steps, result.seconds = state.step, time.perf_counter() - t0
    result.stopped_early, result.stop_reason = state.step < config.max_steps, state.stop_reason
    result.last_checkpoint = state.last_checkpoint
    return result


def _bad_loss(loss: Any, step: int) -> str:
    """Why a loss cannot be trained on (a message naming what to fix)."""
    if not isinstance(loss, torch.Tensor):
        return f"step {step}: loss_fn returned a {type(loss).__name__}, not a tensor"
    if loss.numel() != 1:
        return (f"step {step}: loss_fn returned a tensor of shape {tuple(loss.shape)}; it must be one number "
                "(reduce it, e.g. with .mean())")
    return (f"step {step}: the loss does not depend on any trainable parameter (requires_grad is False): are "
            "all parameters frozen, or was the loss computed under torch.no_grad()?")


def _every(step: int, every: int | None) -> bool:
    return every is not None and step % every == 0


# --- one optimizer step ----------------------------------------------------------------------------------

def _train_step(run: _Run) -> None:
    """Forward/backward over ``grad_accum`` micro-batches, the NaN/inf guard, clipping, the update."""
    state, config, dist = run.state, run.state.config, run.dist
    total = torch.zeros((), device=dist.device)  # summed on the device: one host sync per step, not per micro-batch
    for k in range(config.grad_accum):
        state.micro_step = k
        state.batch = to_device(shard_batch(run.stream.next(), dist.rank, dist.world_size), dist.device)
        run.emit(Event.BATCH_READY)  # callbacks may replace state.batch (e.g. adversarial examples)
        if dist.world_size > 1:  # DDP all-reduces gradients only on the last micro-batch (as in nanoGPT)
            run.ddp_model.require_backward_grad_sync = k == config.grad_accum - 1  # type: ignore[assignment]
        with run.autocast():
            loss = run.loss_fn(run.ddp_model, state.batch)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            raise ConfigError(_bad_loss(loss, state.step + 1))
        state.micro_loss = loss
        run.emit(Event.BEFORE_BACKWARD)
        (loss / config.grad_accum).backward()
        run.emit(Event.AFTER_BACKWARD)
        total += loss.detach().float()
    state.batch, state.micro_loss = None, None
    mean_loss = (dist.all_reduce_sum(total / config.grad_accum) / dist.world_size).item()
    max_norm = config.clip_norm if config.clip_norm is not None else math.inf
    grad_norm = float(torch.nn.utils.clip_grad_norm_(state.model.parameters(), max_norm))
    if not (math.isfinite(mean_loss) and math.isfinite(grad_norm)):
        state.optimizer.zero_grad(set_to_none=True)
        raise TrainingDivergedError(_diverged_message(state, mean_loss, grad_norm))
    state.loss, state.grad_norm, state.lr = mean_loss, grad_norm, float(state.scheduler.get_last_lr()[0])
    run.emit(Event.BEFORE_OPTIMIZER_STEP)
    state.optimizer.step()
    state.scheduler.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1


def _diverged_message(state: TrainState, loss: float, grad_norm: float) -> str:
    where = (f"The last good checkpoint is {state.last_checkpoint}; resume from it (fit(..., resume_from=...)) "
             if state.last_checkpoint else "No checkpoint was written (set checkpoint_dir and checkpoint_every "
             "to keep one); train again ")
    return (f"training diverged at step {state.step + 1} of {state.config.max_steps}: the loss is {loss} and the "
            f"gradient norm is {grad_norm}. No update was applied at this step. {where}"
            "with a lower lr (TrainConfig.lr for the default AdamW, or the lr you build your optimizer with: "
            "each param group's new lr replaces the checkpoint's), a longer warm-up or clip_norm set.")


def _agree_on_stop(run: _Run) -> None:
    """Under DDP, stop on every rank when a callback on any rank asked to stop.

    Called after every event group that may set ``stop_training`` (FIT_START, the step's events, the
    evaluation's, CHECKPOINT) and before the next decision that starts collectives (evaluate, save, the
    next step): ranks that disagreed there would wait for each other forever.
    """
    state = run.state
    if run.dist.world_size > 1:
        stop = run.dist.all_reduce_sum(torch.tensor([float(state.stop_training)]))
        if stop.item() > 0 and not state.stop_training:
            state.stop_reason = state.stop_reason or "a callback on another rank asked to stop"
        state.stop_training = bool(stop.item() > 0)


# --- evaluation and early stopping -----------------------------------------------------------------------

def _eval_batches(eval_data: Data, limit: int | None, seed: int) -> Iterable[Any]:
    if callable(eval_data) and not hasattr(eval_data, "__iter__"):
        if limit is None:
            raise ConfigError("eval_data is a batch function, so TrainConfig.eval_batches must say how many "
                              "batches to evaluate on")
        return (_call_seeded(eval_data, seed, i) for i in range(limit))
    return islice(eval_data, limit)  # type: ignore[arg-type]


def _call_seeded(batch_fn: Callable[[int], Any], seed: int, i: int) -> Any:
    with batch_rng(seed, i, EVAL):  # the same evaluation batches on every rank and at every evaluation
        return batch_fn(i)


@torch.no_grad()
def _evaluate(run: _Run, eval_data: Data, metric_fn: MetricFn | None) -> None:
    """Mean loss (and ``metric_fn`` values) over the evaluation rows of every rank, into ``state.metrics``."""
    state, dist = run.state, run.dist
    run.optimizer_mode(train=False)
    run.emit(Event.EVAL_START)
    was_training = state.model.training
    state.model.eval()
    sums: dict[str, float] = {}
    rows = 0
    try:  # the model goes back to train mode also when evaluation fails
        for batch in _eval_batches(eval_data, state.config.eval_batches, state.config.seed):
            batch = to_device(shard_batch(batch, dist.rank, dist.world_size, even=False), dist.device)
            n = batch_rows(batch)
            if n == 0:  # a small last batch may leave some ranks without rows
                continue
            with run.autocast():
                values: dict[str, Any] = {"loss": run.loss_fn(state.model, batch)}
                values.update(metric_fn(state.model, batch) if metric_fn else {})
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + float(value) * n
            rows += n
        names = sorted(sums)
        totals = dist.all_reduce_sum(torch.tensor([sums[k] for k in names] + [rows], dtype=torch.float64))
        if totals[-1] == 0:
            raise ConfigError("eval_data yielded no batches; pass at least one evaluation batch or leave it None")
    finally:
        state.model.train(was_training)
    state.metrics = {k: float(totals[i] / totals[-1]) for i, k in enumerate(names)}
    if state.is_main:
        log.info("step %d: eval %s", state.step, ", ".join(f"{k} {v:.4f}" for k, v in state.metrics.items()))
    run.emit(Event.EVAL_END)


def _early_stopping(state: TrainState) -> None:
    rule = state.config.early_stopping
    if rule is None:
        return
    if rule.metric not in state.metrics:
        raise ConfigError(f"early_stopping.metric {rule.metric!r} is not an evaluation metric "
                          f"(have {sorted(state.metrics)}); pass a metric_fn that returns it")
    value, best = state.metrics[rule.metric], state.best_metric
    gain = math.inf if best is None else (best - value if rule.mode == "min" else value - best)
    if gain > rule.min_delta:
        state.best_metric, state.evals_without_improvement = value, 0
        return
    state.evals_without_improvement += 1
    if state.evals_without_improvement >= rule.patience:
        state.stop_training = True
        state.stop_reason = (f"early stopping at step {state.step}: {rule.metric} did not improve by more than "
                             f"{rule.min_delta} for {rule.patience} evaluations (best {best:.6g})")
        log.info("%s", state.stop_reason)


# --- setup, checkpoints, resume --------------------------------------------------------------------------

def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def _make_optimizer(spec: OptimizerSpec, model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if spec is None:
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    opt = spec if isinstance(spec, torch.optim.Optimizer) else spec(model) if callable(spec) else None
    if not isinstance(opt, torch.optim.Optimizer):
        raise ConfigError("optimizer must be a torch.optim.Optimizer, a factory optimizer(model) returning one, "
                          f"or None; got {type(spec if opt is None else opt).__name__}")
    own = {id(p) for p in model.parameters()}
    if any(id(p) not in own for g in opt.param_groups for p in g["params"]):
        raise ConfigError("the optimizer holds parameters that are not the model's; build it from model.parameters()")
    return opt


def _prepare(model: nn.Module, train_data: Data, config: TrainConfig, optimizer: OptimizerSpec, loss_fn: LossFn,
             callbacks: list[CallbackFn], dist: Distributed) -> _Run:
    _seed_everything(config.seed + dist.rank)
    model.to(dist.device)
    model.train()
    opt = _make_optimizer(optimizer, model, config)
    state = TrainState(model=model, optimizer=opt, scheduler=build_scheduler(opt, config), config=config,
                       rank=dist.rank, world_size=dist.world_size)
    run = _Run(state=state, ddp_model=dist.wrap(model), loss_fn=loss_fn, callbacks=callbacks, dist=dist)
    run.stream = BatchStream(train_data, seed=config.seed, on_epoch_change=lambda kind, epoch: _epoch_change(run, kind, epoch))
    return run


def _epoch_change(run: _Run, kind: str, epoch: int) -> None:
    run.state.epoch, run.state.batch_in_epoch = epoch, 0
    run.emit(Event.EPOCH_END if kind == "end" else Event.EPOCH_START)


def _save(run: _Run) -> None:
    state, config = run.state, run.state.config
    run.optimizer_mode(train=False)
    path = checkpoint_path(config.checkpoint_dir or ".", state.step)
    if state.is_main:
        extra = {"step": state.step, "epoch": run.stream.epoch, "batch_in_epoch": run.stream.batch_in_epoch,
                 "batch_index": run.stream.index, "best_metric": state.best_metric,
                 "evals_without_improvement": state.evals_without_improvement, "world_size": state.world_size,
                 "config": config.to_dict()}
        save_checkpoint(path, model=state.model, optimizer=state.optimizer, scheduler=state.scheduler, extra=extra)
        _prune(path, config.keep_checkpoints)
        log.info("step %d: checkpoint %s", state.step, path)
    run.dist.barrier()
    state.last_checkpoint = path
    run.emit(Event.CHECKPOINT)


def _prune(newest: Path, keep: int) -> None:
    """Delete checkpoints older than the ``keep - 1`` that precede ``newest`` (later steps are left alone)."""
    older = sorted((p for p in newest.parent.glob("step-*.safetensors")
                    if 0 <= checkpoint_step(p) < checkpoint_step(newest)), key=checkpoint_step)
    for old in older[: max(0, len(older) - (keep - 1))]:
        old.unlink(missing_ok=True)


def _apply_new_hyperparameters(state: Any, asked: list[tuple[Any, Any]], path: Path) -> None:
    """Resuming with another ``lr`` or ``weight_decay`` (after a divergence, say) takes effect: ``asked`` holds
    each param group's ``(initial_lr, weight_decay)`` as this run built it (from ``TrainConfig`` for the default
    AdamW, or the optimizer passed in), and the states just loaded carry the checkpoint's, so they are
    rescaled here, group by group. Schedule shape, warm-up, clipping and max_steps come from the new config."""
    sched = state.scheduler
    for i, (group, (lr, wd)) in enumerate(zip(state.optimizer.param_groups, asked, strict=False)):
        old = group.get("initial_lr")
        if isinstance(lr, int | float) and isinstance(old, int | float) and old > 0 and lr != old:
            group["initial_lr"] = lr
            if i < len(sched.base_lrs):
                sched.base_lrs[i] = lr
            log.info("resumed from %s with lr %g in param group %d (the checkpoint trained with %g)", path, lr, i, old)
        if isinstance(wd, int | float) and group.get("weight_decay", wd) != wd:
            log.info("resumed from %s with weight_decay %g in param group %d (the checkpoint trained with %g)",
                     path, wd, i, group["weight_decay"])
            group["weight_decay"] = wd
    # the lr of the first resumed step, from the new base lrs and the new schedule (LambdaLR's own formula,
    # so an unchanged config gives the checkpoint's lr bit for bit); get_last_lr() reports it too
    for group, base, fn in zip(state.optimizer.param_groups, sched.base_lrs, sched.lr_lambdas, strict=False):
        group["lr"] = base * fn(sched.last_epoch)
    sched._last_lr = [group["lr"] for group in state.optimizer.param_groups]


def _resume(run: _Run, where: Path) -> None:
    state = run.state
    path = latest_checkpoint(where) if where.is_dir() else where
    if path is None:
        raise IntegrityError(f"{where}: no checkpoint (step-*.safetensors) to resume from")
    asked = [(g.get("initial_lr"), g.get("weight_decay")) for g in state.optimizer.param_groups]
    # rank 0 restores its RNG states exactly; other ranks re-seed from (seed, rank, step): see docs/train.md
    meta = load_checkpoint(path, model=state.model, optimizer=state.optimizer, scheduler=state.scheduler,
                           restore_rng=state.is_main)
    try:
        pos = {k: int(meta[k]) for k in ("step", "epoch", "batch_in_epoch", "batch_index", "evals_without_improvement")}
        best = meta["best_metric"]
        if min(pos.values()) < 0 or not (best is None or isinstance(best, int | float)):
            raise ValueError(f"negative position or non-numeric best_metric: {pos}, {best!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"{path}: damaged checkpoint: its training position does not read "
                             f"({type(exc).__name__}: {exc})") from None
    _apply_new_hyperparameters(state, asked, path)
    if pos["step"] > state.config.max_steps:
        raise ConfigError(f"{path}: the checkpoint is at step {pos['step']}, past max_steps "
                          f"{state.config.max_steps}; raise max_steps to train on")
    if not state.is_main:
        _seed_everything(state.config.seed + state.rank + 1_000_003 * pos["step"])
    state.step, state.best_metric = pos["step"], best
    state.evals_without_improvement = pos["evals_without_improvement"]
    state.epoch, state.batch_in_epoch = pos["epoch"], pos["batch_in_epoch"]
    run.stream.index, run.stream.epoch = pos["batch_index"], state.epoch
    run.stream.batch_in_epoch = state.batch_in_epoch
    state.last_checkpoint = path
    log.info("resumed from %s at step %d of %d", path, state.step, state.config.max_steps)
