"""Schedule-Free AdamW (Defazio et al. 2024, "The Road Less Scheduled").

No learning-rate schedule is needed (only a short warm-up, built in): the optimizer keeps a base sequence
``z`` (plain Adam steps), an average ``x`` of it, and trains at an interpolation ``y`` between them::

    y = (1-β1)·z + β1·x ;  z ← z - γ·ĝ(y) ;  x ← (1-c)·x + c·z   with c = w_t / Σ w_i

The model's parameters hold ``y`` while training and ``x`` while evaluating: call ``optimizer.train()``
before training steps and ``optimizer.eval()`` before evaluating or saving the model. The attribute
``requires_train_eval_modes = True`` tells :func:`nnforge.train.fit` to do this itself. Do not combine it
with a decaying LR scheduler (a constant one is fine).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field, model_validator

from nnforge.config import Config, config_type
from nnforge.errors import ConfigError, NnforgeError
from nnforge.optim._base import LR, Beta, Eps, RealParamsOnly, WeightDecay, run_closure, with_grads
from nnforge.optim._registry import like_param, register_optimizer

__all__ = ["ScheduleFreeAdamW", "ScheduleFreeConfig"]


@config_type("optim.schedule-free-adamw")
class ScheduleFreeConfig(Config):
    """Options of :class:`ScheduleFreeAdamW`."""

    lr: LR = 2.5e-3
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: Eps = 1e-8
    weight_decay: WeightDecay = 0.0
    warmup_steps: int = Field(0, ge=0, description="steps of linear lr warm-up")
    r: float = Field(0.0, ge=0.0, description="polynomial weighting power of the average")
    weight_lr_power: float = Field(2.0, ge=0.0, description="power of lr_max in the averaging weights")

    @model_validator(mode="after")
    def _check_beta1(self) -> ScheduleFreeConfig:
        _check_beta1(self.betas[0])
        return self


def _check_beta1(beta1: float) -> None:
    if not beta1 > 0:
        raise ConfigError(f"betas[0] must be > 0 for Schedule-Free AdamW (got {beta1}): it interpolates y between "
                          "the average x and z with weight β1, and eval() recovers x by dividing by β1.")


class ScheduleFreeAdamW(RealParamsOnly, torch.optim.Optimizer):
    """Schedule-Free AdamW; ``.train()`` / ``.eval()`` swap the parameters between y and x."""

    requires_train_eval_modes = True

    def __init__(self, params: Any, lr: float = 2.5e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0, warmup_steps: int = 0, r: float = 0.0,
                 weight_lr_power: float = 2.0) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                    "warmup_steps": warmup_steps, "r": r, "weight_lr_power": weight_lr_power,
                    "k": 0, "lr_max": 0.0, "weight_sum": 0.0, "train_mode": True}
        super().__init__(params, defaults)
        for group in self.param_groups:
            _check_beta1(group["betas"][0])

    @torch.no_grad()
    def _swap(self, train: bool) -> None:
        for group in self.param_groups:
            if group["train_mode"] == train:
                continue
            beta1 = group["betas"][0]
            # eval: x = (y - (1-β1)·z)/β1 = lerp(y, z, 1 - 1/β1); train: y = lerp(x, z, 1 - β1)
            weight = 1 - beta1 if train else 1 - 1 / beta1
            params = [p for p in group["params"] if "z" in self.state[p]]
            if params:
                torch._foreach_lerp_(params, [self.state[p]["z"] for p in params], weight)
            group["train_mode"] = train

    def train(self) -> None:
        """Put the training point y in the parameters (before training steps)."""
        self._swap(True)

    def eval(self) -> None:
        """Put the averaged point x in the parameters (before evaluating, saving or exporting)."""
        self._swap(False)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One update; the parameters must be in train mode."""
        loss = run_closure(closure)
        for group in self.param_groups:
            if not group["train_mode"]:
                raise NnforgeError("ScheduleFreeAdamW.step() called in eval mode; call optimizer.train() first")
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        params, grads = with_grads(group, "ScheduleFreeAdamW")
        if not params:
            return
        beta1, beta2 = group["betas"]
        k, warmup = group["k"], group["warmup_steps"]
        sched = (k + 1) / warmup if k < warmup else 1.0
        lr = group["lr"] * sched * math.sqrt(1 - beta2 ** (k + 1))  # bias correction folded into lr
        group["lr_max"] = lr_max = max(lr, group["lr_max"])
        weight = (k + 1) ** group["r"] * lr_max ** group["weight_lr_power"]
        group["weight_sum"] += weight
        ckp1 = weight / group["weight_sum"] if group["weight_sum"] else 0.0
        for p in params:
            if "z" not in self.state[p]:
                self.state[p]["z"] = p.detach().clone()
                self.state[p]["exp_avg_sq"] = torch.zeros_like(p)
        zs = [self.state[p]["z"] for p in params]
        sqs = [self.state[p]["exp_avg_sq"] for p in params]
        torch._foreach_mul_(sqs, beta2)
        torch._foreach_addcmul_(sqs, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(sqs)
        torch._foreach_add_(denom, group["eps"])
        normed = torch._foreach_div(grads, denom)
        if group["weight_decay"]:
            torch._foreach_add_(normed, params, alpha=group["weight_decay"])  # decay at y
        torch._foreach_lerp_(params, zs, ckp1)  # y ← lerp(y, z, c): moves the x part of y
        torch._foreach_add_(params, normed, alpha=lr * (beta1 * (1 - ckp1) - 1))
        torch._foreach_add_(zs, normed, alpha=-lr)
        group["k"] = k + 1


@register_optimizer("schedule-free-adamw", ScheduleFreeConfig,
                    "Defazio et al. (2024), The Road Less Scheduled", state={"z": like_param, "exp_avg_sq": like_param})
def build_schedule_free(params: list[Any], config: ScheduleFreeConfig) -> torch.optim.Optimizer:
    """:class:`ScheduleFreeAdamW` with ``config``'s options."""
    return ScheduleFreeAdamW(params, **config.model_dump())
