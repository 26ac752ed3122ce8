"""Token choice: each token picks its ``k`` highest-scoring experts (Switch, GShard, Mixtral, DeepSeek-V3).

Scores are a softmax over the experts or an independent sigmoid per expert (DeepSeek-V3); the chosen ``k`` weights
are renormalised to sum to 1 unless ``normalize`` is off. A non-learned ``bias`` buffer is added to the scores for
*choosing* only, never to the combine weights: auxiliary-loss-free balancing (DeepSeek-V3) moves it after each
training step towards the under-loaded experts. ``capacity_factor`` limits each expert to
``ceil(factor · N · k / E)`` assignments and drops the rest (lowest weight first); ``None`` is dropless.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from nnforge.moe._routing import Routing, sort_assignments
from nnforge.moe.routers._base import RouterGate, RouterOptions, capacity, keep_within_capacity, register_router

__all__ = ["TopKRouter", "TopKOptions"]


class TopKOptions(RouterOptions):
    k: int = Field(2, ge=1, le=64, description="experts per token")
    score: Literal["softmax", "sigmoid"] = "softmax"
    normalize: bool = Field(True, description="renormalise the k chosen weights to sum to 1")
    capacity_factor: float | None = Field(None, gt=0, description="None: dropless; else assignments per expert "
                                                                   "are capped at ceil(factor * N * k / E)")


@register_router("top-k")
class TopKRouter(nn.Module):
    Options = TopKOptions
    bias: torch.Tensor

    def __init__(self, d_model: int, num_experts: int, options: TopKOptions) -> None:
        super().__init__()
        if options.k > num_experts:
            raise ValueError(f"The 'k' option of the top-k router must be at most num_experts ({num_experts}). "
                             f"Got {options.k} instead.")
        self.options, self.num_experts = options, num_experts
        self.gate = RouterGate(d_model, num_experts)
        self.register_buffer("bias", torch.zeros(num_experts))  # selection-only bias (aux-loss-free balancing)

    def forward(self, x: torch.Tensor) -> Routing:
        o, n = self.options, x.shape[0]
        logits = self.gate(x)  # (N, E)
        probs = logits.softmax(-1) if o.score == "softmax" else logits.sigmoid()
        chosen = (probs.detach() + self.bias).topk(o.k, dim=-1).indices  # (N, k)
        weight = probs.gather(1, chosen)
        if o.normalize:
            weight = weight / weight.sum(-1, keepdim=True).clamp_min(1e-9)
        token = torch.arange(n, device=x.device).repeat_interleave(o.k)
        expert, weight = chosen.reshape(-1), weight.reshape(-1)
        dropped = 0
        if o.capacity_factor is not None:
            cap = capacity(o.capacity_factor, n, o.k, self.num_experts)
            token, expert, weight, dropped = keep_within_capacity(token, expert, weight, self.num_experts, cap)
        token, expert, weight, counts = sort_assignments(token, expert, weight, self.num_experts)
        return Routing(token, expert, weight, counts, logits, probs, chosen, dropped)

    @torch.no_grad()
    def update_bias(self, counts: torch.Tensor, rate: float) -> None:
        """Auxiliary-loss-free balancing: raise the bias of experts below the mean load, lower those above."""
        load = counts.float()
        self.bias += rate * torch.sign(load.mean() - load)
