"""SGD, torch's implementation: the local optimizer federated learning's analyses assume (FedAvg, FedProx and
SCAFFOLD are stated for SGD steps) and the baseline of every optimizer comparison.

``build_optimizer("sgd", model, lr=0.05, momentum=0.9)``.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, model_validator

from nnforge.config import Config, config_type
from nnforge.optim._base import LR, WeightDecay, check_dense
from nnforge.optim._registry import like_param, register_optimizer

__all__ = ["SGDConfig"]


@config_type("optim.sgd")
class SGDConfig(Config):
    """Options of torch's SGD."""

    lr: LR = 0.05
    momentum: float = Field(0.0, ge=0, lt=1)
    dampening: float = Field(0.0, ge=0, le=1)
    nesterov: bool = False
    weight_decay: WeightDecay = 0.0

    @model_validator(mode="after")
    def _nesterov(self) -> SGDConfig:
        if self.nesterov and (self.momentum == 0 or self.dampening != 0):
            raise ValueError(f"nesterov needs momentum > 0 and dampening 0; got momentum {self.momentum}, "
                             f"dampening {self.dampening}")
        return self


@register_optimizer("sgd", SGDConfig, "Robbins & Monro (1951); momentum: Polyak (1964), Sutskever et al. (2013)",
                    state={"momentum_buffer": like_param})
def build_sgd(params: list[Any], config: SGDConfig) -> torch.optim.Optimizer:
    """torch.optim.SGD with ``config``'s options. Sparse gradients are refused before anything moves, as by every
    nnforge optimizer (torch's SGD would take them; a checkpoint's state rules assume dense ones)."""
    opt = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, dampening=config.dampening,
                          nesterov=config.nesterov, weight_decay=config.weight_decay)

    def dense_only(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    check_dense(p.grad, "sgd")

    opt.register_step_pre_hook(dense_only)
    return opt
