"""Muon, torch's implementation, on hidden matrices, with AdamW for the rest, as one optimizer.

Muon: K. Jordan et al. (2024), "Muon: An optimizer for hidden layers in neural networks" (blog post), and
Liu et al. (2025), "Muon is Scalable for LLM Training" (the ``match_rms_adamw`` learning-rate scaling used
here, so ``lr`` is on AdamW's scale).

``build_optimizer("muon", model)`` splits the model with :func:`~nnforge.optim.param_groups_for`: the
hidden 2-D matrices get ``torch.optim.Muon``, embeddings, output layer, norms and biases get
``torch.optim.AdamW`` (at ``adamw_lr``). The result is a :class:`~nnforge.optim.HybridOptimizer`.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, PositiveInt

from nnforge.config import Config, config_type
from nnforge.optim._base import LR, Beta, Eps, WeightDecay, split_flag
from nnforge.optim._groups import MATRIX_KEY
from nnforge.optim._hybrid import HybridOptimizer
from nnforge.optim._registry import register_optimizer

__all__ = ["MuonConfig"]


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


@register_optimizer("muon", MuonConfig,
                    "Jordan et al. (2024), Muon: An optimizer for hidden layers in neural networks",
                    matrix_aware=True)
def build_muon(params: list[Any], config: MuonConfig) -> torch.optim.Optimizer:
    """torch.optim.Muon over the 2-D ``use_muon`` groups and torch.optim.AdamW over the others."""
    muon_groups, adam_groups = [], []
    for g in split_flag(params, MATRIX_KEY):
        opts = {k: v for k, v in g.items() if k != MATRIX_KEY}
        if g[MATRIX_KEY]:
            flat = [p for p in opts["params"] if p.ndim == 2]  # torch's Muon takes exactly 2-D
            other = [p for p in opts["params"] if p.ndim != 2]
            muon_groups += [{**opts, "params": flat}] if flat else []
            adam_groups += [{**opts, "params": other, "lr": config.adamw_lr}] if other else []
        else:
            adam_groups.append({"lr": config.adamw_lr, **opts})
    parts: list[torch.optim.Optimizer] = []
    if muon_groups:
        parts.append(torch.optim.Muon(muon_groups, lr=config.lr, weight_decay=config.weight_decay,
                                      momentum=config.momentum, nesterov=config.nesterov,
                                      ns_steps=config.ns_steps, adjust_lr_fn="match_rms_adamw"))
    if adam_groups:
        parts.append(torch.optim.AdamW(adam_groups, lr=config.adamw_lr, betas=config.adamw_betas,
                                       eps=config.adamw_eps, weight_decay=config.weight_decay))
    return HybridOptimizer(parts)
