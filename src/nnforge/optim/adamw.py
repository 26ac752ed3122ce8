"""AdamW, torch's implementation (Loshchilov & Hutter 2019, "Decoupled Weight Decay Regularization").

The reference every other optimizer is measured against: ``build_optimizer("adamw", model, lr=3e-3)``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from nnforge.config import Config, config_type
from nnforge.optim._base import LR, Beta, Eps, WeightDecay
from nnforge.optim._registry import ADAM_STATE, register_optimizer

__all__ = ["AdamWConfig"]


@config_type("optim.adamw")
class AdamWConfig(Config):
    """Options of torch's AdamW."""

    lr: LR = 1e-3
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: Eps = 1e-8
    weight_decay: WeightDecay = 0.01
    fused: bool | None = Field(None, description="torch's fused kernel (None: torch decides)")


@register_optimizer("adamw", AdamWConfig, "Loshchilov & Hutter (2019), Decoupled Weight Decay Regularization",
                    state=ADAM_STATE)
def build_adamw(params: list[Any], config: AdamWConfig) -> torch.optim.Optimizer:
    """torch.optim.AdamW with ``config``'s options."""
    return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, eps=config.eps,
                             weight_decay=config.weight_decay, fused=config.fused)
