"""The sparse kernels' arithmetic in pure torch: the fallback (no compiler, not on the CPU) and the test oracle."""

from __future__ import annotations

import torch

from nnforge.compress.prune.kernels._format import SparseWeight
from nnforge.compress.quantize.kernels import quantize_activations

__all__ = ["reference_sparse_mm"]


def reference_sparse_mm(x: torch.Tensor, w: SparseWeight, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``x (..., K) @ W.T -> (..., N)`` float32, as the kernels compute it.

    fp32 formats: ``x @ dense(W).T`` (``dtype=torch.float64`` for an oracle free of summation-order rounding).
    int8 formats: activations rounded to int8 per row (:func:`~nnforge.compress.quantize.kernels.quantize_activations`,
    as the kernels do), integer products summed in float64 (exact), times the activation and row scales; rows
    holding NaN or inf take ``x @ dense(W).T`` in fp32, where those values propagate as through ``nn.Linear``.
    """
    x2 = x.reshape(-1, w.K).float()
    wd = w.dense().to(x2.device)
    if w.spec.values == "fp32":
        y = (x2.to(dtype) @ wd.to(dtype).T).float()
    else:
        assert w.scales is not None  # noqa: S101 - int8 formats carry scales (checked by SparseWeight)
        s = w.scales.to(x2.device).double()
        q, sx = quantize_activations(x2)
        wi = torch.round(wd.double() / s[:, None])  # the stored int8 codes (exact: code * scale / scale)
        y = ((q.double() @ wi.T) * sx.double() * s).float()
        finite = torch.isfinite(x2).all(dim=-1)
        if not bool(finite.all()):
            y[~finite] = x2[~finite] @ wd.T
    return y.reshape(*x.shape[:-1], w.N)
