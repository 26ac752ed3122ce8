"""Fake quantization with a straight-through estimator, as parametrizations of the weights."""

from __future__ import annotations

import torch
from torch import nn

from nnforge.compress.quantize.kernels import dequantize_codes, quantize_codes

__all__ = ["fake_quantize", "fake_quantize_activations", "FakeQuantWeight"]


def fake_quantize(w: torch.Tensor, fmt: str, group_size: int | None, symmetric: bool = True) -> torch.Tensor:
    """``w`` rounded exactly as :func:`~nnforge.compress.quantize.kernels.quantize_weight` stores it, with
    the identity gradient (STE): ``w + (Q(w) - w).detach()``. Works on 2-D weights and on conv kernels."""
    matrix = w.reshape(w.shape[0], -1)
    with torch.no_grad():
        u, s, z = quantize_codes(matrix, fmt, group_size, symmetric=symmetric)
        q = dequantize_codes(u, s, z, fmt, matrix.shape[1]).to(w.dtype).reshape(w.shape)
    return w + (q - w).detach()


def fake_quantize_activations(x: torch.Tensor) -> torch.Tensor:
    """int8 absmax per token (last dimension), straight-through (BitNet's activation quantization)."""
    with torch.no_grad():
        s = (x.abs().amax(dim=-1, keepdim=True) / 127.0).clamp_min(1e-12)
        q = torch.round(x / s).clamp_(-127, 127) * s
    return x + (q - x).detach()


class FakeQuantWeight(nn.Module):
    """A parametrization: the module's ``weight`` reads as its fake-quantized latent fp32 weight."""

    def __init__(self, fmt: str, group_size: int | None, symmetric: bool) -> None:
        super().__init__()
        self.fmt, self.group_size, self.symmetric = fmt, group_size, symmetric

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        k = w[0].numel()
        group = self.group_size if self.group_size is None or k % self.group_size == 0 else None
        return fake_quantize(w, self.fmt, group, self.symmetric)
