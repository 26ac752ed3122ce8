"""Pure-torch quantisation of weights and activations, and the reference matmul (fallback and test oracle)."""

from __future__ import annotations

import torch

from nnforge.compress.quantize.kernels._format import PackedWeight, format_spec, pack, padded_k
from nnforge.errors import ConfigError

__all__ = ["quantize_weight", "from_int", "quantize_activations", "reference_matmul"]


def _grouped(w: torch.Tensor, Kp: int, G: int) -> torch.Tensor:
    N, K = w.shape
    full = torch.zeros(N, Kp, dtype=torch.float32)
    full[:, :K] = w
    return full.view(N, Kp // G, G)


def quantize_weight(w: torch.Tensor, fmt: str, group_size: int | None = 128, *, symmetric: bool = True) -> PackedWeight:
    """Round-to-nearest quantisation of a float ``(N, K)`` weight into a :class:`PackedWeight`.

    int8/int4/int2: absmax scales (symmetric) or min/max scale and zero point (asymmetric, int4/int2);
    ternary: absmean scale and codes {-1, 0, 1} (BitNet b1.58); binary: absmean scale and sign.
    """
    spec = format_spec(fmt)
    if not symmetric and not spec.asymmetric_ok:
        raise ConfigError(f"Format {fmt!r} is symmetric only. Got symmetric=False instead.")
    N, K = w.shape
    Kp = padded_k(K, spec.bits, group_size)
    G = group_size or Kp
    wg = _grouped(w.detach().float(), Kp, G)  # (N, ng, G)
    qmax = (1 << spec.bits) - 1
    zeros = None
    if fmt in ("ternary", "binary"):
        # absmean over the real weights of the group (padding excluded when per-row)
        n_real = torch.full((N, Kp // G, 1), float(G)) if group_size else torch.full((N, 1, 1), float(K))
        s = (wg.abs().sum(-1, keepdim=True) / n_real).clamp_min(1e-8)
        u = (wg >= 0).to(torch.uint8) if fmt == "binary" else (torch.round(wg / s).clamp_(-1, 1) + 1).to(torch.uint8)
    elif symmetric:
        z = int(spec.z_symmetric)
        s = (wg.abs().amax(-1, keepdim=True) / (z - 1 if spec.bits > 2 else z)).clamp_min(1e-8)
        u = (torch.round(wg / s).clamp_(-z, qmax - z) + z).to(torch.uint8)
    else:
        lo, hi = wg.amin(-1, keepdim=True).clamp(max=0), wg.amax(-1, keepdim=True).clamp(min=0)
        s = ((hi - lo) / qmax).clamp_min(1e-8)
        zq = torch.round(-lo / s).clamp(0, qmax)
        u = (torch.round(wg / s) + zq).clamp_(0, qmax).to(torch.uint8)
        zeros = zq.squeeze(-1).to(torch.uint8)
    codes = u.view(N, Kp)[:, :K]
    scales = s.squeeze(-1).to(torch.float16)
    return PackedWeight(fmt, pack(codes, spec.bits, group_size), scales, zeros, N, K, group_size)


def from_int(q: torch.Tensor, scales: torch.Tensor, fmt: str, group_size: int | None,
             zeros: torch.Tensor | None = None) -> PackedWeight:
    """Pack integer weights ``q`` (N, K) with scales ``(N, ng)`` (fp16 after conversion).

    Symmetric ``q`` are signed values (int8 in [-128, 127], int4 in [-8, 7], int2 in [-2, 1], ternary in
    {-1, 0, 1}, binary in {-1, +1}); with ``zeros`` (int4/int2) ``q`` are the unsigned codes themselves.
    """
    spec = format_spec(fmt)
    N, K = q.shape
    qi = q.to(torch.int32)
    if zeros is not None:
        codes = qi
    elif fmt == "binary":
        codes = (qi > 0).to(torch.int32)
    else:
        codes = qi + int(spec.z_symmetric)
    ng = padded_k(K, spec.bits, group_size) // (group_size or padded_k(K, spec.bits, None))
    sc = torch.zeros(N, ng, dtype=torch.float16)
    sc[:, : scales.shape[1]] = scales.to(torch.float16)
    zz = None
    if zeros is not None:
        zz = torch.zeros(N, ng, dtype=torch.uint8)
        zz[:, : zeros.shape[1]] = zeros.to(torch.uint8)
    return PackedWeight(fmt, pack(codes, spec.bits, group_size), sc, zz, N, K, group_size)


def quantize_activations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row absmax int8: ``(codes int8 (M, K), scales float32 (M, 1))``, exactly as the C++ kernel does."""
    x = x.float()
    s = x.abs().amax(dim=-1, keepdim=True) / 127.0
    s = torch.where(s > 0, s, torch.ones_like(s))
    return torch.round(x / s).clamp(-127, 127).to(torch.int8), s


def reference_matmul(x: torch.Tensor, w: PackedWeight, *, act_quant: bool = True,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``x (M, K) @ dequant(w).T`` in pure torch.

    With ``act_quant`` the activations are first rounded to int8 per row as the kernels do, so the result
    differs from the kernels only by float summation order (use ``dtype=torch.float64`` for an oracle
    whose integer sums are exact). Without it, this is the plain fp32 dequantise-and-matmul.
    """
    x2 = x.reshape(-1, w.K)
    if act_quant:
        q, s = quantize_activations(x2)
        xe = q.to(dtype) * s.to(dtype)
    else:
        xe = x2.to(dtype)
    y = xe @ w.dequantize().to(dtype).T
    return y.to(torch.float32).reshape(*x.shape[:-1], w.N)
