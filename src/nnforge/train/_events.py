"""The named events of the training loop, the state callbacks see, and the callback protocol."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from nnforge.train._config import TrainConfig

__all__ = ["Event", "TrainState", "Callback", "CallbackFn", "on"]

log = logging.getLogger("nnforge.train")


class Event(StrEnum):
    """The points of :func:`~nnforge.train.fit` where callbacks run. The loop, as pseudocode::

        # FIT_START
        while step < max_steps and not stop_training:
            # STEP_START
            for micro_batch in range(grad_accum):
                batch = next(train_data)             # EPOCH_END, EPOCH_START when an iterable wraps around
                # BATCH_READY                        # callbacks may replace state.batch here
                loss = loss_fn(model, batch) / grad_accum      # under bf16 autocast if asked
                # BEFORE_BACKWARD
                loss.backward()                      # DDP all-reduces gradients on the last micro-batch
                # AFTER_BACKWARD
            grad_norm = clip_grad_norm_(model, clip_norm)      # NaN/inf loss or norm: StepFailedError
            # BEFORE_OPTIMIZER_STEP
            optimizer.step(); scheduler.step(); optimizer.zero_grad()
            step += 1
            # STEP_END
            if step % eval_every == 0 or step == max_steps:
                # EVAL_START
                metrics = mean of loss (and metric_fn) over the eval batches   # early stopping reads them
                # EVAL_END
            if step % checkpoint_every == 0 or training ends:
                save checkpoint (rank 0, atomically)
                # CHECKPOINT
        # FIT_END                                    # also when training fails: state.error is set

    Each event's value is the name of the :class:`Callback` method that handles it.
    """

    FIT_START = "fit_start"
    EPOCH_START = "epoch_start"
    STEP_START = "step_start"
    BATCH_READY = "batch_ready"
    BEFORE_BACKWARD = "before_backward"
    AFTER_BACKWARD = "after_backward"
    BEFORE_OPTIMIZER_STEP = "before_optimizer_step"
    STEP_END = "step_end"
    EPOCH_END = "epoch_end"
    EVAL_START = "eval_start"
    EVAL_END = "eval_end"
    CHECKPOINT = "checkpoint"
    FIT_END = "fit_end"


@dataclass
class TrainState:
    """What the loop knows, shared with callbacks. Callbacks may read anything and set ``stop_training``.

    ``model`` is the user's module (never the DDP wrapper). ``loss`` is the last step's loss averaged over
    micro-batches and ranks; ``micro_loss`` the current micro-batch's (unscaled) loss tensor between
    BEFORE_BACKWARD and AFTER_BACKWARD. ``epoch`` and ``batch_in_epoch`` count only for iterable data.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    config: TrainConfig
    rank: int = 0
    world_size: int = 1
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    micro_step: int = 0
    batch: Any = None
    micro_loss: torch.Tensor | None = None
    loss: float = float("nan")
    grad_norm: float = float("nan")
    lr: float = float("nan")
    metrics: dict[str, float] = field(default_factory=dict)
    best_metric: float | None = None
    evals_without_improvement: int = 0
    stop_training: bool = False
    stop_reason: str = ""
    last_checkpoint: Path | None = None
    error: BaseException | None = None

    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints and logs (rank 0)."""
        return self.rank == 0


CallbackFn = Callable[[Event, TrainState], None]


class Callback:
    """Base of class-style callbacks: ``__call__`` dispatches each event to the method of the same name.

    Subclasses define only the methods they need (``def step_end(self, state): ...``). Any plain function
    ``fn(event, state)`` is a callback too; :func:`on` adapts a one-event function ``fn(state)``.
    Callbacks run on every rank; one that writes files or prints should check ``state.is_main``.
    """

    def __call__(self, event: Event, state: TrainState) -> None:
        handler = getattr(self, event.value, None)
        if handler is not None:
            handler(state)


class _OnEvent(Protocol):
    def __call__(self, state: TrainState) -> None: ...


def on(event: Event | Iterable[Event], fn: _OnEvent) -> CallbackFn:
    """A callback that calls ``fn(state)`` at ``event`` (or at each of several events)."""
    events = {event} if isinstance(event, Event) else set(event)

    def callback(e: Event, state: TrainState) -> None:
        if e in events:
            fn(state)

    callback.__name__ = f"on_{'_'.join(sorted(e.value for e in events))}"
    return callback


def emit(callbacks: Iterable[CallbackFn], event: Event, state: TrainState) -> None:
    """Run every callback for ``event``, in order."""
    for cb in callbacks:
        cb(event, state)
