"""Expert choice (Zhou et al. 2022): each expert picks its ``capacity_factor · N / E`` best tokens.

Load is balanced by construction (every expert takes the same number of tokens); a token may be taken by several
experts or by none. Each expert chooses among all tokens of the batch, so a token's routing depends on the others:
use it for encoders and training, not for autoregressive decoding one token at a time.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from nnforge.moe._routing import Routing
from nnforge.moe.routers._base import RouterGate, RouterOptions, capacity, register_router

__all__ = ["ExpertChoiceRouter", "ExpertChoiceOptions"]


class ExpertChoiceOptions(RouterOptions):
    capacity_factor: float = Field(2.0, gt=0, description="average experts per token; each expert takes "
                                                          "ceil(factor * N / E) tokens")


@register_router("expert-choice")
class ExpertChoiceRouter(nn.Module):
    Options = ExpertChoiceOptions

    def __init__(self, d_model: int, num_experts: int, options: ExpertChoiceOptions) -> None:
        super().__init__()
        self.options, self.num_experts = options, num_experts
        self.gate = RouterGate(d_model, num_experts)

    def forward(self, x: torch.Tensor) -> Routing:
        n = x.shape[0]
        logits = self.gate(x)  # (N, E)
        probs = logits.softmax(-1)
        c = min(n, capacity(self.options.capacity_factor, n, 1, self.num_experts))
        top = probs.t().topk(c, dim=-1)  # per expert: (E, C) scores and token indices
        expert = torch.arange(self.num_experts, device=x.device).repeat_interleave(c)
        token = top.indices.reshape(-1)
        weight = top.values.reshape(-1)
        counts = torch.full((self.num_experts,), c, dtype=torch.long, device=x.device)
        return Routing(token, expert, weight, counts, logits, probs, None, 0)
