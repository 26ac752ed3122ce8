"""Prodigy (Mishchenko & Defazio 2023, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner").

A learning-rate-free Adam: it estimates the distance ``d`` to the solution from the correlation of the
gradients with the distance travelled since the start, and uses ``d`` as the step size. Leave ``lr=1.0``
(it multiplies ``d``; a schedule such as cosine decay still helps). ``d`` starts at ``d0`` and only grows::

    r ← √β2·r + (d/d0)·d·lr·⟨g, x0 - x⟩ ;  s ← √β2·s + (d/d0)·d·lr·g ;  d ← max(d, r / ‖s‖₁)

``d`` is shared by all param groups and each group scales it by its own ``lr``; it is stored in every
group (``group["d"]``), so ``state_dict`` carries it. As in the reference implementation
(konstmish/prodigy), a step moves by the ``d·lr`` that scaled its moments (the d from before the step);
the new ``d`` takes effect at the next step, except in the ``ε`` term (``√v + d·ε``), which uses it.
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

__all__ = ["Prodigy", "ProdigyConfig"]


@config_type("optim.prodigy")
class ProdigyConfig(Config):
    """Options of :class:`Prodigy`."""

    lr: LR = 1.0
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: Eps = 1e-8
    weight_decay: WeightDecay = 0.0
    d0: float = Field(1e-6, gt=0.0, description="initial estimate of the distance to the solution")
    d_coef: float = Field(1.0, gt=0.0, description="multiplier of the estimate")
    growth_rate: float | None = Field(None, gt=1.0, description="largest factor d may grow by in one step (None: no limit)")
    use_bias_correction: bool = False


class Prodigy(RealParamsOnly, torch.optim.Optimizer):
    """Prodigy (Adam form, decoupled weight decay); see the module docstring."""

    def __init__(self, params: Any, lr: float = 1.0, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, d0: float = 1e-6, d_coef: float = 1.0, growth_rate: float | None = None,
                 use_bias_correction: bool = False) -> None:
        defaults = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay, "d0": d0,
                    "d_coef": d_coef, "growth_rate": growth_rate, "use_bias_correction": use_bias_correction,
                    "d": d0, "d_max": d0, "d_numerator": 0.0, "k": 0}
        super().__init__(params, defaults)

    def _dlr(self, group: dict[str, Any], d: float) -> float:
        beta1, beta2 = group["betas"]
        k = group["k"] + 1
        bc = math.sqrt(1 - beta2**k) / (1 - beta1**k) if group["use_bias_correction"] else 1.0
        return d * group["lr"] * bc

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        """One update of every parameter with a gradient, and of the shared estimate ``d``."""
        loss = run_closure(closure)
        first = self.param_groups[0]
        d, d0, d_max = first["d"], first["d0"], first["d_max"]
        beta3 = math.sqrt(first["betas"][1])
        numerator = first["d_numerator"] * beta3
        denominator: torch.Tensor | None = None
        active = []
        for group in self.param_groups:
            params, grads = with_grads(group, "Prodigy")
            if not params:
                continue
            if denominator is None:  # on the parameters' device: a CPU tensor cannot take a GPU sum in place
                denominator = torch.zeros((), device=params[0].device)
            active.append((group, params, grads))
            numerator += self._accumulate(group, params, grads, d, beta3)
            denominator += torch.stack(torch._foreach_norm([self.state[p]["s"] for p in params], 1)).sum()
        den = float(denominator) if denominator is not None else 0.0
        if not active or den == 0.0:  # all gradients zero: nothing to learn from, nothing to move
            return loss
        d_hat = first["d_coef"] * numerator / den
        if d == d0:
            d = max(d, d_hat)
        d_max = max(d_max, d_hat)
        d_new = min(d_max, d * first["growth_rate"]) if first["growth_rate"] else d_max
        for group, params, _ in active:
            self._update(group, params, first["d"], d_new)  # step size: the d that scaled the moments
        for group in self.param_groups:
            group.update(d=d_new, d_max=d_max, d_numerator=numerator, k=group["k"] + 1)
        return loss

    def _accumulate(self, group: dict[str, Any], params: list[torch.Tensor], grads: list[torch.Tensor],
                    d: float, beta3: float) -> float:
        """Update the moments and ``s`` of one group; return its term of the d numerator."""
        beta1, beta2 = group["betas"]
        dlr = self._dlr(group, d)
        for p in params:
            st = self.state[p]
            if "s" not in st:
                st.update(s=torch.zeros_like(p), p0=p.detach().clone(), exp_avg=torch.zeros_like(p),
                          exp_avg_sq=torch.zeros_like(p))
        states = [self.state[p] for p in params]
        diffs = torch._foreach_sub([st["p0"] for st in states], params)
        dots = torch.stack([torch.vdot(g.flatten(), x.flatten()) for g, x in zip(grads, diffs, strict=True)]).sum()
        scale = d / group["d0"] * dlr
        avgs, sqs = [st["exp_avg"] for st in states], [st["exp_avg_sq"] for st in states]
        torch._foreach_mul_(avgs, beta1)
        torch._foreach_add_(avgs, grads, alpha=d * (1 - beta1))
        torch._foreach_mul_(sqs, beta2)
        torch._foreach_addcmul_(sqs, grads, grads, value=d * d * (1 - beta2))
        ss = [st["s"] for st in states]
        torch._foreach_mul_(ss, beta3)
        torch._foreach_add_(ss, grads, alpha=scale)
        return scale * float(dots)

    def _update(self, group: dict[str, Any], params: list[torch.Tensor], d: float, d_new: float) -> None:
        dlr = self._dlr(group, d)
        states = [self.state[p] for p in params]
        denom = torch._foreach_sqrt([st["exp_avg_sq"] for st in states])
        torch._foreach_add_(denom, d_new * group["eps"])  # the reference adds the updated d·ε
        if group["weight_decay"]:
            torch._foreach_mul_(params, 1 - group["weight_decay"] * dlr)
        torch._foreach_addcdiv_(params, [st["exp_avg"] for st in states], denom, value=-dlr)


@register_optimizer("prodigy", ProdigyConfig,
                    "Mishchenko & Defazio (2023), Prodigy: An Expeditiously Adaptive Parameter-Free Learner",
                    state={"s": like_param, "p0": like_param, "exp_avg": like_param, "exp_avg_sq": like_param})
def build_prodigy(params: list[Any], config: ProdigyConfig) -> torch.optim.Optimizer:
    """:class:`Prodigy` with ``config``'s options."""
    return Prodigy(params, **config.model_dump())
