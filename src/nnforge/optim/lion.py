"""Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

The update is the sign of an interpolation between the momentum and the gradient, so every coordinate
moves by exactly ``lr``; use a learning rate 3-10x smaller than AdamW's and a weight decay 3-10x larger::

    c = β1·m + (1-β1)·g ;  θ ← θ·(1 - lr·wd) - lr·sign(c) ;  m ← β2·m + (1-β2)·g
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from nnforge.config import Config, config_type
from nnforge.optim._base import LR, Beta, RealParamsOnly, WeightDecay, run_closure, with_grads
from nnforge.optim._registry import like_param, register_optimizer

__all__ = ["Lion", "LionConfig"]


@config_type("optim.lion")
class LionConfig(Config):
    """Options of :class:`Lion`."""

    lr: LR = 1e-4
    betas: tuple[Beta, Beta] = (0.9, 0.99)
    weight_decay: WeightDecay = 0.0


class Lion(RealParamsOnly, torch.optim.Optimizer):
    """Lion: sign of interpolated momentum, decoupled weight decay (see the module docstring)."""

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = with_grads(group, "Lion")
            if not params:
                continue
            lr, wd, (beta1, beta2) = group["lr"], group["weight_decay"], group["betas"]
            moms = [self.state[p].setdefault("exp_avg", torch.zeros_like(p)) for p in params]
            update = torch._foreach_lerp(moms, grads, 1 - beta1)  # c = β1·m + (1-β1)·g
            torch._foreach_sign_(update)
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            torch._foreach_add_(params, update, alpha=-lr)
            torch._foreach_lerp_(moms, grads, 1 - beta2)
        return loss


@register_optimizer("lion", LionConfig, "Chen et al. (2023), Symbolic Discovery of Optimization Algorithms",
                    state={"exp_avg": like_param})
def build_lion(params: list[Any], config: LionConfig) -> torch.optim.Optimizer:
    """:class:`Lion` with ``config``'s options."""
    return Lion(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
