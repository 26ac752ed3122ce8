"""What a router decides, in one form every router and every dispatch shares.

A router maps ``N`` tokens to experts and returns a :class:`Routing`: the *assignments* (token, expert, combine
weight) sorted by expert, so that each expert's tokens form one contiguous block, plus the router's logits and
probabilities (for the balancing losses and the diagnostics). Token-choice top-k gives each token up to ``k``
assignments; expert choice gives each expert up to its capacity; a capacity limit drops assignments (a dropped
token gets nothing from the experts and passes through the block's residual).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Routing", "sort_assignments"]


@dataclass
class Routing:
    """Assignments sorted by expert, and what the router saw.

    Attributes:
        token: (A,) token index of each assignment.
        expert: (A,) expert index of each assignment, non-decreasing.
        weight: (A,) combine weight (differentiable: the router learns through it).
        counts: (E,) assignments per expert (``counts.sum() == A``).
        logits: (N, E) router logits (z-loss, diagnostics).
        probs: (N, E) routing probabilities (softmax or sigmoid of the logits; the auxiliary loss's P).
        chosen: (N, k) the experts each token chose before any capacity drop (token choice), else None.
        dropped: assignments removed by the capacity limit.
    """

    token: torch.Tensor
    expert: torch.Tensor
    weight: torch.Tensor
    counts: torch.Tensor
    logits: torch.Tensor
    probs: torch.Tensor
    chosen: torch.Tensor | None
    dropped: int = 0

    @property
    def num_experts(self) -> int:
        return int(self.logits.shape[-1])


def sort_assignments(token: torch.Tensor, expert: torch.Tensor, weight: torch.Tensor,
                     num_experts: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(token, expert, weight) sorted by expert (stable: within an expert, in token order) and the counts."""
    # a unique key (expert, then position) sorts stably with any sort: ONNX export has no stable sort
    key = expert * len(expert) + torch.arange(len(expert), device=expert.device)
    order = torch.argsort(key)
    expert = expert[order]
    counts = torch.bincount(expert, minlength=num_experts)
    return token[order], expert, weight[order], counts
