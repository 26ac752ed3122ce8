"""Shared by the explain benchmarks: digits, the built-in digits recipe's training settings, flipped labels,
and percentile-bootstrap intervals.

The training recipe is ``src/nnforge/recipes/builtin/digits.yaml``'s: AdamW (lr 3e-3, weight decay 0.01),
batch 64, 300 steps, 20 warm-up steps then cosine, gradient clipping at 1 (the loop's default), seed per model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

RECIPE: dict[str, Any] = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.01, "batch_size": 64,
                          "max_steps": 300, "schedule": "cosine", "warmup_steps": 20, "clip_norm": 1.0,
                          "source": "src/nnforge/recipes/builtin/digits.yaml"}


def digits(limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x_train, y_train, x_test, y_test`` of nnforge's digits (stratified 80/20, seed 0); ``limit`` rows each."""
    from nnforge.data import load

    data = load("digits")
    x, y = (torch.from_numpy(a) for a in data.splits["train"])
    xt, yt = (torch.from_numpy(a) for a in data.splits["test"])
    return x[:limit], y[:limit], xt[:limit], yt[:limit]


def train(arch: str, x: torch.Tensor, y: torch.Tensor, *, seed: int, steps: int = RECIPE["max_steps"],
          checkpoint_dir: str | None = None, checkpoint_every: int | None = None, keep: int = 10) -> nn.Module:
    """A model of ``arch`` trained with the recipe on ``(x, y)``, in eval mode."""
    from nnforge.models import build
    from nnforge.train import TensorBatches, TrainConfig, fit

    torch.manual_seed(seed)
    model = build(arch)
    config = TrainConfig(max_steps=steps, lr=RECIPE["lr"], weight_decay=RECIPE["weight_decay"],
                         schedule=RECIPE["schedule"], warmup_steps=min(RECIPE["warmup_steps"], steps // 5),
                         clip_norm=RECIPE["clip_norm"], device="cpu", seed=seed, log_every=10_000,
                         checkpoint_every=checkpoint_every, checkpoint_dir=checkpoint_dir, keep_checkpoints=keep)
    fit(model, TensorBatches(x, y, batch_size=RECIPE["batch_size"], seed=seed), config=config)
    return model.eval()


def flip_labels(y: torch.Tensor, fraction: float, seed: int, classes: int = 10) -> tuple[torch.Tensor, np.ndarray]:
    """``y`` with ``fraction`` of its labels changed to another class chosen uniformly; and the mask of those."""
    rng = np.random.default_rng(seed)
    n = len(y)
    picked = rng.choice(n, int(round(fraction * n)), replace=False)
    noisy = y.clone()
    noisy[picked] = torch.from_numpy((y[picked].numpy() + rng.integers(1, classes, len(picked))) % classes)
    mask = np.zeros(n, dtype=bool)
    mask[picked] = True
    return noisy, mask


def bootstrap_draws(stat: Callable[[np.ndarray], Any], n: int, *, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``stat(indices)`` on ``n_boot`` resamples (with replacement) of ``range(n)``: (n_boot, ...)."""
    rng = np.random.default_rng(seed)
    return np.array([stat(rng.integers(0, n, n)) for _ in range(n_boot)], dtype=np.float64)


def percentile_ci(draws: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    """The percentile interval of bootstrap ``draws`` (n_boot, ...) → (2, ...)."""
    return np.nanquantile(draws, [alpha / 2, 1 - alpha / 2], axis=0)


def interval(value: float, ci: Any) -> list[float]:
    """``[lo, hi]`` widened to contain ``value`` (a percentile bootstrap can miss its own point estimate)."""
    return [min(float(ci[0]), value), max(float(ci[1]), value)]
