"""The experts: ``E`` feed-forward networks in stacked weights, and the dispatch that runs them.

Each expert is ``w2 · act(w1 · x + b1) + b2`` (the dense FFN of a transformer block, so a dense checkpoint can
seed them: :func:`nnforge.moe.upcycle_`). Three dispatches compute the same thing (tested equal, forward and
backward):

* ``grouped`` — the tokens gathered once in expert order (the router already sorted its assignments), each expert
  run on its one contiguous block, the weighted outputs added back with one ``index_add_``;
* ``padded`` — the blocks padded to the largest and run as two batched matmuls (``bmm``) over all experts;
* ``reference`` — the Mixtral-style loop: each expert finds its tokens with ``torch.where``, gathers them and
  scatters its outputs back; kept as the test reference and the benchmark's baseline.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from nnforge.moe._routing import Routing

__all__ = ["Experts", "DISPATCHES"]

DISPATCHES = ("grouped", "padded", "reference")
Dispatch = Literal["grouped", "padded", "reference"]


class Experts(nn.Module):
    """``num_experts`` FFNs ``d_model → hidden → d_model`` in stacked weights (Linear layout: ``(out, in)``)."""

    def __init__(self, num_experts: int, d_model: int, hidden: int, *, activation: str = "gelu",
                 bias: bool = True) -> None:
        super().__init__()
        if activation not in ("gelu", "relu", "silu"):
            raise ValueError(f"The 'activation' parameter of Experts must be one of 'gelu', 'relu', 'silu'. "
                             f"Got {activation!r} instead.")
        self.num_experts, self.d_model, self.hidden, self.activation = num_experts, d_model, hidden, activation
        self.w1 = nn.Parameter(torch.empty(num_experts, hidden, d_model))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_model, hidden))
        self.b1 = nn.Parameter(torch.zeros(num_experts, hidden)) if bias else None
        self.b2 = nn.Parameter(torch.zeros(num_experts, d_model)) if bias else None
        for w in (self.w1, self.w2):  # as nn.Linear initialises each expert's weights
            for e in range(num_experts):
                nn.init.kaiming_uniform_(w[e], a=math.sqrt(5))

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(h) if self.activation == "gelu" else F.relu(h) if self.activation == "relu" else F.silu(h)

    def expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert ``e`` on ``x`` (n, d)."""
        h = self._act(F.linear(x, self.w1[e], None if self.b1 is None else self.b1[e]))
        return F.linear(h, self.w2[e], None if self.b2 is None else self.b2[e])

    def forward(self, x: torch.Tensor, routing: Routing, dispatch: Dispatch = "grouped") -> torch.Tensor:
        """The weighted sum of each token's experts' outputs, (N, d); a token with no assignment gets zeros."""
        if dispatch == "grouped":
            return self._grouped(x, routing)
        if dispatch == "padded":
            return self._padded(x, routing)
        if dispatch == "reference":
            return self._reference(x, routing)
        raise ValueError(f"unknown dispatch {dispatch!r}; one of {', '.join(DISPATCHES)}")

    # --- the three dispatches ---------------------------------------------------------------------------------

    def _grouped(self, x: torch.Tensor, r: Routing) -> torch.Tensor:
        xs = x[r.token]  # (A, d) in expert order
        blocks = xs.split(r.counts.tolist())
        ys = torch.cat([self.expert(e, b) for e, b in enumerate(blocks)]) if len(xs) else xs
        return torch.zeros_like(x).index_add_(0, r.token, ys * r.weight.unsqueeze(-1).to(ys.dtype))

    def _padded(self, x: torch.Tensor, r: Routing) -> torch.Tensor:
        counts = r.counts.tolist()
        cmax = max(counts, default=0)
        if cmax == 0:
            return torch.zeros_like(x)
        starts = torch.cumsum(r.counts, 0) - r.counts
        slot = torch.arange(len(r.token), device=x.device) - starts[r.expert]  # position within its expert
        padded = x.new_zeros(self.num_experts, cmax, self.d_model)
        padded[r.expert, slot] = x[r.token]
        h = torch.bmm(padded, self.w1.transpose(1, 2))  # (E, C, h)
        if self.b1 is not None:
            h = h + self.b1.unsqueeze(1)
        y = torch.bmm(self._act(h), self.w2.transpose(1, 2))  # (E, C, d)
        if self.b2 is not None:
            y = y + self.b2.unsqueeze(1)
        ys = y[r.expert, slot]  # (A, d)
        return torch.zeros_like(x).index_add_(0, r.token, ys * r.weight.unsqueeze(-1).to(ys.dtype))

    def _reference(self, x: torch.Tensor, r: Routing) -> torch.Tensor:
        out = torch.zeros_like(x)
        for e in range(self.num_experts):
            (where,) = torch.where(r.expert == e)
            if len(where) == 0:
                continue
            tokens = r.token[where]
            out.index_add_(0, tokens, self.expert(e, x[tokens]) * r.weight[where].unsqueeze(-1))
        return out
