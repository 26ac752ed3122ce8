"""Sophia (Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
Pre-training"), the SophiaG form: momentum preconditioned by a clipped diagonal Hessian estimate.

    m ← β1·m + (1-β1)·g ;  θ ← θ·(1 - lr·wd) - lr·sign(m)·min(|m| / (ρ·bs·h + ε), 1)

``h`` is an EMA (β2) of a diagonal Hessian estimate, refreshed by the training loop every
``hessian_update_interval`` steps through :meth:`Sophia.update_hessian`. With the Gauss-Newton-Bartlett
estimator the loop, every k steps::

    logits = model(x)                                    # (B, T, V)
    y_hat = torch.distributions.Categorical(logits=logits).sample()
    F.cross_entropy(logits.view(-1, V), y_hat.view(-1)).backward()
    optimizer.update_hessian()                           # h ← β2·h + (1-β2)·ĝ⊙ĝ
    optimizer.zero_grad()

``bs = batch_tokens`` (the tokens or samples the sampled-label loss averages over) turns the squared
gradient of that *mean* loss into the GNB estimate ``bs·ĝ⊙ĝ``; it is applied once, in the step's
denominator ``ρ·bs·h``, exactly as the reference implementation (Liuhong99/Sophia, ``SophiaG``) does.

Before any estimate (or with a plain loop that never calls the hook) ``h = 0`` and the clip makes the
update ``lr·sign(m)``: signed momentum, which still makes progress and never divides by zero.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field, PositiveInt

from nnforge.config import Config, config_type
from nnforge.optim._base import LR, Beta, RealParamsOnly, WeightDecay, run_closure, with_grads
from nnforge.optim._registry import like_param, register_optimizer

__all__ = ["Sophia", "SophiaConfig"]


@config_type("optim.sophia")
class SophiaConfig(Config):
    """Options of :class:`Sophia`."""

    lr: LR = 1e-4
    betas: tuple[Beta, Beta] = (0.965, 0.99)
    rho: float = Field(0.04, gt=0.0, description="clipping scale of the preconditioned update")
    weight_decay: WeightDecay = 0.1
    batch_tokens: PositiveInt = Field(1, description="tokens (samples) per batch: scales the GNB estimate")
    hessian_update_interval: PositiveInt = Field(10, description="steps between update_hessian() calls")


class Sophia(RealParamsOnly, torch.optim.Optimizer):
    """SophiaG; call :meth:`update_hessian` every ``hessian_update_interval`` steps (module docstring)."""

    def __init__(self, params: Any, lr: float = 1e-4, betas: tuple[float, float] = (0.965, 0.99), rho: float = 0.04,
                 weight_decay: float = 0.1, batch_tokens: int = 1, hessian_update_interval: int = 10) -> None:
        super().__init__(params, {"lr": lr, "betas": betas, "rho": rho, "weight_decay": weight_decay,
                                  "batch_tokens": batch_tokens})
        self.hessian_update_interval = hessian_update_interval

    def _states(self, params: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        for p in params:
            if "exp_avg" not in self.state[p]:
                self.state[p].update(exp_avg=torch.zeros_like(p), hessian=torch.zeros_like(p))
        return [self.state[p] for p in params]

    @torch.no_grad()
    def update_hessian(self) -> None:
        """Fold the current ``.grad`` (from a loss on sampled labels) into the Hessian EMA as ``g⊙g``
        (``batch_tokens`` scales it in :meth:`step`, once)."""
        for group in self.param_groups:
            params, grads = with_grads(group, "Sophia")
            if not params:
                continue
            hs = [st["hessian"] for st in self._states(params)]
            beta2 = group["betas"][1]
            torch._foreach_mul_(hs, beta2)
            torch._foreach_addcmul_(hs, grads, grads, value=1 - beta2)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads = with_grads(group, "Sophia")
            if not params:
                continue
            states = self._states(params)
            moms, hs = [st["exp_avg"] for st in states], [st["hessian"] for st in states]
            lr, wd = group["lr"], group["weight_decay"]
            torch._foreach_lerp_(moms, grads, 1 - group["betas"][0])
            if wd:
                torch._foreach_mul_(params, 1 - lr * wd)
            denom = torch._foreach_mul(hs, group["rho"] * group["batch_tokens"])
            torch._foreach_add_(denom, 1e-15)
            ratio = torch._foreach_div(torch._foreach_abs(moms), denom)
            torch._foreach_clamp_max_(ratio, 1.0)
            torch._foreach_mul_(ratio, torch._foreach_sign(moms))
            torch._foreach_add_(params, ratio, alpha=-lr)
        return loss


@register_optimizer("sophia", SophiaConfig,
                    "Liu et al. (2023), Sophia: A Scalable Stochastic Second-order Optimizer for "
                    "Language Model Pre-training", state={"exp_avg": like_param, "hessian": like_param})
def build_sophia(params: list[Any], config: SophiaConfig) -> torch.optim.Optimizer:
    """:class:`Sophia` with ``config``'s options."""
    return Sophia(params, **config.model_dump())
