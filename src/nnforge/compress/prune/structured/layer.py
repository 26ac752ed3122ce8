"""Modules that stand in for pruned ones: a causal self-attention with fewer heads, and a removed block."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PrunedCausalSelfAttention", "RemovedBlock"]


class PrunedCausalSelfAttention(nn.Module):
    """char-GPT's causal self-attention with ``n_head`` heads of ``head_dim`` each, however wide the residual.

    The original module derives the head width from the residual width (``C // n_head``), which no longer
    holds once heads are gone: here ``c_attn`` maps C → 3 · n_head · head_dim and ``c_proj`` maps
    n_head · head_dim → C. Parameter names are the original's, so a pruned state dict reads the same.
    """

    def __init__(self, n_embd: int, n_head: int, head_dim: int, *, bias: bool, dropout: float = 0.0) -> None:
        super().__init__()
        self.n_head, self.head_dim, self.dropout = n_head, head_dim, dropout
        self.c_attn = nn.Linear(n_embd, 3 * n_head * head_dim, bias=bias)
        self.c_proj = nn.Linear(n_head * head_dim, n_embd, bias=bias)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.size()
        inner = self.n_head * self.head_dim
        q, k, v = self.c_attn(x).split(inner, dim=2)  # 3 × (B, T, nh·hs)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, inner)  # (B, T, nh·hs)
        return self.resid_dropout(self.c_proj(y))


class RemovedBlock(nn.Module):
    """A residual block removed whole: its input goes through unchanged (whatever else the caller passes).

    It holds no parameters; it keeps the block's place so that the names of the blocks after it stay the same.
    """

    def __init__(self, was: str = "") -> None:
        super().__init__()
        self.was = was

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states

    def extra_repr(self) -> str:
        return f"was={self.was}" if self.was else ""
