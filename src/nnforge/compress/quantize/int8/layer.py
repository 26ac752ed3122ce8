"""Int8 weight-only layers: real int8 storage, per-channel fp32 scales, dequantised on the fly."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["quantize_per_row", "Int8Linear", "Int8Embedding"]


def quantize_per_row(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax int8 per row: returns (int8 weights (N, K), fp32 scales (N,))."""
    w = w.detach().float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12)  # (N,)
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


class Int8Linear(nn.Module):
    """``y = (x @ q.T) * scale + bias`` with ``q`` int8 (N, K) and ``scale`` fp32 (N,)."""

    qweight: torch.Tensor
    scale: torch.Tensor
    bias: torch.Tensor | None

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("qweight", torch.zeros(out_features, in_features, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(out_features))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)

    @classmethod
    def from_float(cls, lin: nn.Linear) -> Int8Linear:
        m = cls(lin.in_features, lin.out_features, lin.bias is not None)
        q, s = quantize_per_row(lin.weight)
        m.qweight.copy_(q)
        m.scale.copy_(s)
        if lin.bias is not None and m.bias is not None:
            m.bias.copy_(lin.bias.detach().float())
        return m

    def dequantize(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the scale is applied to the output: one multiply per output instead of per weight
        y = F.linear(x, self.qweight.to(x.dtype)) * self.scale.to(x.dtype)
        return y + self.bias.to(x.dtype) if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bits=8"


class Int8Embedding(nn.Module):
    """An embedding table stored as int8 rows with one fp32 scale per row."""

    qweight: torch.Tensor
    scale: torch.Tensor

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = num_embeddings, embedding_dim, padding_idx
        self.register_buffer("qweight", torch.zeros(num_embeddings, embedding_dim, dtype=torch.int8))
        self.register_buffer("scale", torch.ones(num_embeddings))

    @classmethod
    def from_float(cls, emb: nn.Embedding) -> Int8Embedding:
        m = cls(emb.num_embeddings, emb.embedding_dim, emb.padding_idx)
        q, s = quantize_per_row(emb.weight)
        m.qweight.copy_(q)
        m.scale.copy_(s)
        return m

    def dequantize(self) -> torch.Tensor:
        return self.qweight.float() * self.scale[:, None]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.qweight).float() * self.scale[ids].unsqueeze(-1)  # (…, D)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, bits=8"
