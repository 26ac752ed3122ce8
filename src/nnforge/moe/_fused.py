"""The ``fused`` dispatch: all experts' forward and backward as one autograd node with a hand-written backward.

Autograd through the per-expert modules records, for every expert, a gather, two linears, an activation, a scale
and a scatter, and its backward replays each of them with its own temporaries. Here the whole expert computation is
one :class:`torch.autograd.Function`:

forward
    ``xs = x[token]`` once (the assignments are already sorted by expert, so each expert's rows are one contiguous
    block); per expert one ``addmm`` into its block of a preallocated ``(A, hidden)`` buffer; the activation once
    over all ``A`` rows; per expert one ``addmm`` into its block of ``(A, d)``; the combine weights applied in
    place and one ``index_add_`` back to the tokens.
backward
    the output gradient gathered once and scaled in place; per expert ``dW2 = gᵀ·G`` and ``dG = g·W2`` (into one
    buffer); the activation's backward once over all rows; per expert ``dW1 = dHᵀ·xs`` and ``dxs = dH·W1``; one
    ``index_add_`` back to the tokens. The combine weights get ``<g_token, y>`` (the router learns through them).

Six matmuls per expert and a handful of memory passes over all rows: what remains is the matmuls (the benchmark
measures that floor too). Plain fp32 ``nn.Linear`` experts only (quantized or adapted experts take ``grouped``).
Not twice differentiable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = ["fused_experts"]


def _activate(name: str, h: torch.Tensor) -> torch.Tensor:
    return F.gelu(h) if name == "gelu" else F.relu(h) if name == "relu" else F.silu(h)


def _activation_backward(name: str, grad: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    if name == "gelu":
        return torch.ops.aten.gelu_backward(grad, h)
    if name == "silu":
        return torch.ops.aten.silu_backward(grad, h)
    return grad.masked_fill_(h <= 0, 0.0)


def _expert(params: tuple[torch.Tensor, ...], e: int, has_bias: bool
            ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]:
    """Expert ``e``'s (w1, b1, w2, b2) out of the flat parameter list."""
    if has_bias:
        return params[4 * e], params[4 * e + 1], params[4 * e + 2], params[4 * e + 3]
    return params[2 * e], None, params[2 * e + 1], None


def _linear_into(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> None:
    """``out = x @ w.T (+ b)`` written into ``out`` (a contiguous block of a preallocated buffer)."""
    if b is not None:
        torch.addmm(b, x, w.t(), out=out)
    else:
        torch.mm(x, w.t(), out=out)


def _blocks(counts: list[int]) -> list[tuple[int, int, int]]:
    """(expert, start, stop) of each non-empty block."""
    out, start = [], 0
    for e, n in enumerate(counts):
        if n:
            out.append((e, start, start + n))
        start += n
    return out


class _FusedExperts(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, token: torch.Tensor, weight: torch.Tensor, counts: list[int],
                activation: str, *params: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        # params: (w1, b1, w2, b2) per expert, or (w1, w2) without biases (fused_experts flattens them); an
        # expert with no tokens gets no gradient (None), as it would through autograd
        has_bias = len(params) == 4 * len(counts)
        blocks = _blocks(counts)
        xs = x.index_select(0, token)
        h = x.new_empty(len(token), params[0].shape[0])
        for e, s, t in blocks:
            w1, b1, _, _ = _expert(params, e, has_bias)
            _linear_into(h[s:t], xs[s:t], w1, b1)
        g = _activate(activation, h)
        y = x.new_empty(len(token), x.shape[1])
        for e, s, t in blocks:
            _, _, w2, b2 = _expert(params, e, has_bias)
            _linear_into(y[s:t], g[s:t], w2, b2)
        w = weight.to(y.dtype).unsqueeze(-1)
        weighted = y * w if ctx.needs_input_grad[2] else y.mul_(w)
        out = torch.zeros_like(x).index_add_(0, token, weighted)
        ctx.save_for_backward(xs, h, g, y if ctx.needs_input_grad[2] else None, token, weight, *params)
        ctx.counts, ctx.activation, ctx.has_bias, ctx.n = counts, activation, has_bias, x.shape[0]
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[Any, ...]:  # type: ignore[override]
        xs, h, g, y, token, weight, *params = ctx.saved_tensors
        has_bias, counts = ctx.has_bias, ctx.counts
        per = 4 if has_bias else 2  # parameters per expert in the flat list
        blocks = _blocks(counts)
        gy = grad_out.index_select(0, token)  # (A, d)
        grad_weight = (gy * y).sum(-1).to(weight.dtype) if ctx.needs_input_grad[2] else None
        gy.mul_(weight.to(gy.dtype).unsqueeze(-1))
        grads: list[torch.Tensor | None] = [None] * len(params)
        dg = torch.empty_like(h)
        for e, s, t in blocks:
            i = per * e
            _, _, w2, _ = _expert(tuple(params), e, has_bias)
            grads[i + 2 if has_bias else i + 1] = gy[s:t].t() @ g[s:t]
            if has_bias:
                grads[i + 3] = gy[s:t].sum(0)
            torch.mm(gy[s:t], w2, out=dg[s:t])
        dh = _activation_backward(ctx.activation, dg, h)
        dxs = torch.empty_like(xs) if ctx.needs_input_grad[0] else None
        for e, s, t in blocks:
            i = per * e
            grads[i] = dh[s:t].t() @ xs[s:t]
            if has_bias:
                grads[i + 1] = dh[s:t].sum(0)
            if dxs is not None:
                torch.mm(dh[s:t], params[i], out=dxs[s:t])
        grad_x = (torch.zeros(ctx.n, xs.shape[1], dtype=xs.dtype, device=xs.device).index_add_(0, token, dxs)
                  if dxs is not None else None)
        return (grad_x, None, grad_weight, None, None, *grads)


def fused_experts(x: torch.Tensor, token: torch.Tensor, weight: torch.Tensor, counts: list[int], activation: str,
                  params: Sequence[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor, torch.Tensor | None]]
                  ) -> torch.Tensor:
    """``Σ_a weight_a · expert_{e(a)}(x[token_a])`` per token with one autograd node (module docstring).

    ``params`` holds each expert's ``(c_fc.weight, c_fc.bias, c_proj.weight, c_proj.bias)``; the biases are all
    tensors or all ``None``.
    """
    has_bias = params[0][1] is not None
    flat: list[torch.Tensor] = []
    for w1, b1, w2, b2 in params:
        flat.extend((w1, b1, w2, b2) if has_bias else (w1, w2))  # type: ignore[arg-type]
    out: torch.Tensor = _FusedExperts.apply(x, token, weight, counts, activation, *flat)
    return out
