"""Learning-rate schedules as multipliers of each group's base lr, for ``torch.optim.lr_scheduler.LambdaLR``.

A plain function (not a callable object) so that LambdaLR's state dict stays small and JSON-friendly; the
schedule is rebuilt from the config on resume and the scheduler's ``last_epoch`` restored.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from nnforge.train._config import TrainConfig

__all__ = ["lr_factor", "build_scheduler"]


def lr_factor(step: int, config: TrainConfig) -> float:
    """The lr multiplier used for optimizer step ``step`` (0-based).

    Linear warm-up from ``1/(warmup_steps+1)`` to 1 over ``warmup_steps``, then:
    ``constant``: 1; ``cosine``: cosine from 1 down to ``min_lr_ratio`` at ``max_steps``;
    ``wsd``: 1 until the last ``decay_fraction`` of the steps, then linear down to ``min_lr_ratio``.
    """
    warmup, total, floor = config.warmup_steps, config.max_steps, config.min_lr_ratio
    if step < warmup:
        return (step + 1) / (warmup + 1)
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "cosine":
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    # wsd: warm-up, stable, decay
    decay_steps = max(1, round(config.decay_fraction * total))
    decay_start = max(warmup, total - decay_steps)
    if step < decay_start:
        return 1.0
    progress = min(1.0, (step - decay_start) / max(1, total - decay_start))
    return 1.0 - (1.0 - floor) * progress


def build_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR applying :func:`lr_factor` to every parameter group."""

    def factor(step: int) -> float:
        return lr_factor(step, config)

    fn: Callable[[int], float] = factor
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
