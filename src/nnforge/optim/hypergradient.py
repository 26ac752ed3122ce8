"""AdamW with hypergradient descent on its learning rate (Baydin et al. 2018, "Online Learning Rate
Adaptation with Hypergradient Descent"): an optimizer that learns its own step size while it trains.

The derivative of the loss with respect to the learning rate used at the previous step is
``∂f(θ_t)/∂α = -∇f(θ_t)·u_{t-1}`` (``u`` the previous Adam direction). This implements the paper's
multiplicative, normalised rule, which is scale-free and composes with an LR schedule: the group's
``lr`` (set by you or a scheduler) is multiplied by a learned ``lr_scale``::

    lr_scale ← clip(lr_scale · (1 + β_hd · cos(∇f(θ_t), u_{t-1})), min_scale, max_scale)
    θ ← θ·(1 - α·wd) - α·u_t   with α = lr·lr_scale,  u_t = m̂ / (√v̂ + ε)

When successive gradients keep pointing along the previous step the rate grows; when they turn back
(overshoot) it shrinks. ``group["lr_scale"]`` is part of ``state_dict``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field

from nnforge.config import Config, config_type
from nnforge.optim._base import LR, Beta, Eps, RealParamsOnly, WeightDecay, run_closure, with_grads
from nnforge.optim._registry import like_param, register_optimizer

__all__ = ["AdamWHD", "AdamWHDConfig"]


@config_type("optim.adamw-hd")
class AdamWHDConfig(Config):
    """Options of :class:`AdamWHD`."""

    lr: LR = 1e-3
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: Eps = 1e-8
    weight_decay: WeightDecay = 0.01
    hypergrad_lr: float = Field(0.02, ge=0.0, description="β_hd: step size of the multiplicative lr update")
    min_scale: float = Field(0.1, gt=0.0, description="lowest learned lr multiplier")
    max_scale: float = Field(10.0, gt=0.0, description="highest learned lr multiplier")


class AdamWHD(RealParamsOnly, torch.optim.Optimizer):
    """AdamW whose learning rate is adapted online by hypergradient descent (module docstring)."""

    def __init__(self, params: Any, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01, hypergrad_lr: float = 0.02, min_scale: float = 0.1,
                 max_scale: float = 10.0) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "hypergrad_lr": hypergrad_lr,
                    "min_scale": min_scale, "max_scale": max_scale, "lr_scale": 1.0, "k": 0}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One hypergradient update of each group's ``lr_scale``, then one AdamW update."""
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = with_grads(group, "AdamWHD")
            if params:
                self._step_group(group, params, grads)
        return loss

    def _hypergradient_cos(self, grads: list[torch.Tensor], prev: list[torch.Tensor]) -> float:
        """cos(∇f(θ_t), u_{t-1}) over the whole group (0 when either is zero)."""
        dot = torch.stack([torch.vdot(g.flatten(), u.flatten()) for g, u in zip(grads, prev, strict=True)]).sum()
        norms = torch.stack(torch._foreach_norm(grads)).norm() * torch.stack(torch._foreach_norm(prev)).norm()
        value = float(dot / norms) if float(norms) > 0 else 0.0
        return value if math.isfinite(value) else 0.0

    def _step_group(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor]) -> None:
        for p in params:
            if "exp_avg" not in self.state[p]:
                self.state[p].update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p),
                                     prev_update=torch.zeros_like(p))
        states = [self.state[p] for p in params]
        prev = [st["prev_update"] for st in states]
        cos = self._hypergradient_cos(grads, prev)
        scale = group["lr_scale"] * (1 + group["hypergrad_lr"] * cos)
        group["lr_scale"] = scale = min(max(scale, group["min_scale"]), group["max_scale"])
        beta1, beta2 = group["betas"]
        k = group["k"] + 1
        avgs, sqs = [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states]
        torch._foreach_lerp_(avgs, grads, 1 - beta1)
        torch._foreach_mul_(sqs, beta2)
        torch._foreach_addcmul_(sqs, grads, grads, value=1 - beta2)
        denom = torch._foreach_sqrt(sqs)
        torch._foreach_div_(denom, math.sqrt(1 - beta2**k))
        torch._foreach_add_(denom, group["eps"])
        update = torch._foreach_div(avgs, denom)
        torch._foreach_div_(update, 1 - beta1**k)  # u_t = m̂ / (√v̂ + ε)
        alpha = group["lr"] * scale
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - alpha * group["weight_decay"])
        torch._foreach_add_(params, update, alpha=-alpha)
        torch._foreach_copy_(prev, update)
        group["k"] = k


@register_optimizer("adamw-hd", AdamWHDConfig,
                    "Baydin et al. (2018), Online Learning Rate Adaptation with Hypergradient Descent",
                    state={"exp_avg": like_param, "exp_avg_sq": like_param, "prev_update": like_param})
def build_adamw_hd(params: list[Any], config: AdamWHDConfig) -> torch.optim.Optimizer:
    """:class:`AdamWHD` with ``config``'s options."""
    return AdamWHD(params, **config.model_dump())
