"""Muon, torch's implementation, on hidden matrices, with AdamW for the rest, as one optimizer.

Muon: K. Jordan et al. (2024), "Muon: An optimizer for hidden layers in neural networks" (blog post), and
Liu et al. (2025), "Muon is Scalable for LLM Training" (the ``match_rms_adamw`` learning-rate scaling used
here, so ``lr`` is on AdamW's scale).

``build_optimizer("muon", model)`` splits the model with :func:`~nnforge.optim.param_groups_for`: the
hidden matrices get ``torch.optim.Muon``'s update, embeddings, output layer, norms and biases get
``torch.optim.AdamW`` (at ``adamw_lr``). The result is a :class:`~nnforge.optim.HybridOptimizer`. Hidden
parameters with more than 2 dimensions (conv kernels) are flattened to ``(out, in·k·k)`` for the Muon update,
as ``batched-muon`` does (torch's Muon takes exactly 2-D, so :class:`FlatMuon` hands it 2-D views).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field, PositiveInt
from torch.optim._muon import muon as _muon_functional

from nnforge.config import Config, config_type
from nnforge.optim._base import LR, Beta, Eps, WeightDecay, run_closure, split_flag
from nnforge.optim._groups import MATRIX_KEY
from nnforge.optim._hybrid import HybridOptimizer
from nnforge.optim._registry import ADAM_STATE, like_param, register_optimizer

__all__ = ["MuonConfig", "FlatMuon"]


@config_type("optim.muon")
class MuonConfig(Config):
    """Options of the Muon + AdamW hybrid."""

    lr: LR = Field(0.02, description="Muon's lr (AdamW scale, via adjust_lr_fn='match_rms_adamw')")
    momentum: Beta = 0.95
    nesterov: bool = True
    ns_steps: PositiveInt = 5
    weight_decay: WeightDecay = 0.1
    adamw_lr: LR = Field(6e-3, description="lr of the AdamW part (embeddings, output layer, norms, biases)")
    adamw_betas: tuple[Beta, Beta] = (0.9, 0.95)
    adamw_eps: Eps = 1e-8


class FlatMuon(torch.optim.Muon):
    """``torch.optim.Muon`` that also takes parameters with more than 2 dimensions: each is updated as its
    ``(shape[0], -1)`` view (momentum buffers have that 2-D shape), with torch's own update function."""

    def __init__(self, params: Any, **options: Any) -> None:
        signature = inspect.signature(torch.optim.Muon.__init__).parameters
        defaults = {k: v.default for k, v in signature.items() if k not in ("self", "params")}
        defaults.update(options)
        torch.optim.Optimizer.__init__(self, params, defaults)  # Muon's own __init__ refuses N-D parameters
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim < 2:
                    raise ValueError(f"Muon needs parameters with 2 or more dimensions; got size {tuple(p.size())}")

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        loss = run_closure(closure)
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                params.append(p.view(p.shape[0], -1))  # a view: torch's in-place update reaches p
                grads.append(p.grad.reshape(p.shape[0], -1))
                bufs.append(self.state[p].setdefault("momentum_buffer", torch.zeros_like(grads[-1])))
            if params:
                _muon_functional(params, grads, bufs, lr=group["lr"], weight_decay=group["weight_decay"],
                                 momentum=group["momentum"], nesterov=group["nesterov"],
                                 ns_coefficients=group["ns_coefficients"], eps=group["eps"],
                                 ns_steps=group["ns_steps"], adjust_lr_fn=group["adjust_lr_fn"], has_complex=False)
        return loss


@register_optimizer("muon", MuonConfig,
                    "Jordan et al. (2024), Muon: An optimizer for hidden layers in neural networks",
                    matrix_aware=True, state={**ADAM_STATE, "momentum_buffer": like_param})
def build_muon(params: list[Any], config: MuonConfig) -> torch.optim.Optimizer:
    """torch's Muon update over the ``use_muon`` groups (N-D flattened) and torch.optim.AdamW over the others."""
    muon_groups, adam_groups = [], []
    for g in split_flag(params, MATRIX_KEY):
        opts = {k: v for k, v in g.items() if k != MATRIX_KEY}
        if g[MATRIX_KEY]:
            muon_groups.append(opts)
        else:
            adam_groups.append({"lr": config.adamw_lr, **opts})
    parts: list[torch.optim.Optimizer] = []
    if muon_groups:
        parts.append(FlatMuon(muon_groups, lr=config.lr, weight_decay=config.weight_decay,
                                      momentum=config.momentum, nesterov=config.nesterov,
                                      ns_steps=config.ns_steps, adjust_lr_fn="match_rms_adamw"))
    if adam_groups:
        parts.append(torch.optim.AdamW(adam_groups, lr=config.adamw_lr, betas=config.adamw_betas,
                                       eps=config.adamw_eps, weight_decay=config.weight_decay))
    return HybridOptimizer(parts)
