"""The router registry and what every router shares."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnforge.config import Config
from nnforge.registry import Registry

__all__ = ["ROUTERS", "RouterOptions", "register_router", "capacity", "RouterGate"]

ROUTERS: Registry[Any] = Registry("router")


class RouterOptions(Config):
    """Options every router accepts (none so far); a router's own ``Options`` subclass this."""


class RouterGate(nn.Module):
    """The router's logits ``x · weightᵀ`` (no bias), initialised as ``nn.Linear``.

    Deliberately not an ``nn.Linear``: ``quantize_`` and LoRA leave the routing in full precision (it is tiny, and
    rounding it moves tokens between experts) and list it as skipped instead.
    """

    def __init__(self, d_model: int, num_experts: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_experts, d_model))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


def register_router(name: str) -> Callable[[Any], Any]:
    """Register a router class (``cls(d_model, num_experts, options)``, with an ``Options`` config class)."""
    return ROUTERS.register(name)


def capacity(factor: float, tokens: int, k: int, num_experts: int) -> int:
    """Assignments one expert may take: ``ceil(factor · tokens · k / experts)`` (at least 1)."""
    return max(1, math.ceil(factor * tokens * k / num_experts))


def keep_within_capacity(token: torch.Tensor, expert: torch.Tensor, weight: torch.Tensor, num_experts: int,
                         cap: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Keep each expert's ``cap`` highest-weight assignments (ties: earlier token first); the rest are dropped."""
    by_weight = torch.argsort(weight.detach(), descending=True, stable=True)
    by_expert = by_weight[torch.argsort(expert[by_weight], stable=True)]
    e = expert[by_expert]
    starts = torch.cumsum(torch.bincount(e, minlength=num_experts), 0) - torch.bincount(e, minlength=num_experts)
    position = torch.arange(len(e), device=e.device) - starts[e]
    keep = by_expert[position < cap]
    return token[keep], expert[keep], weight[keep], int(len(e) - len(keep))
