"""Pure-torch quantisation of weights and activations, and the reference matmul (fallback and test oracle)."""

from __future__ import annotations

import torch

from nnforge.compress.quantize.kernels._format import PackedWeight, format_spec, pack, padded_k
from nnforge.errors import ConfigError

__all__ = ["quantize_weight", "quantize_codes", "dequantize_codes", "from_int", "quantize_activations",
           "reference_matmul", "integer_matmul"]


def _grouped(w: torch.Tensor, Kp: int, G: int) -> torch.Tensor:
    N, K = w.shape
    full = torch.zeros(N, Kp, dtype=torch.float32, device=w.device)  # QAT rounds on the training device
    full[:, :K] = w
    return full.view(N, Kp // G, G)


def quantize_codes(w: torch.Tensor, fmt: str, group_size: int | None, *, symmetric: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Round-to-nearest codes of a float ``(N, K)`` weight, grouped: ``(u (N, ng, G), s (N, ng, 1), z)``.

    ``u`` are float-valued unsigned codes, ``s`` the scales already rounded to fp16 (what gets stored, so
    that the codes are optimal for the stored scale), ``z`` the zero-point codes ``(N, ng, 1)`` of the
    asymmetric variant or ``None``. Padding columns up to ``Kp`` are zeros. Differentiable nowhere: QAT
    wraps it in a straight-through estimator.
    """
    spec = format_spec(fmt)
    if not symmetric and not spec.asymmetric_ok:
        raise ConfigError(f"Format {fmt!r} is symmetric only. Got symmetric=False instead.")
    N, K = w.shape
    Kp = padded_k(K, spec.bits, group_size)
    G = group_size or Kp
    wg = _grouped(w.detach().float(), Kp, G)  # (N, ng, G)
    qmax = spec.levels - 1
    zq = None
    if fmt in ("ternary", "binary"):
        # absmean over the real weights of the group (padding excluded when per-row)
        n_real = torch.full((N, Kp // G, 1) if group_size else (N, 1, 1), float(G if group_size else K), device=w.device)
        s = _fp16(wg.abs().sum(-1, keepdim=True) / n_real)
        u = (wg >= 0).float() if fmt == "binary" else torch.round(wg / s).clamp_(-1, 1) + 1
    elif symmetric:
        z = int(spec.z_symmetric)
        s = _fp16(wg.abs().amax(-1, keepdim=True) / (z - 1 if spec.levels > 4 else z))
        u = torch.round(wg / s).clamp_(-z, qmax - z) + z
    else:
        lo, hi = wg.amin(-1, keepdim=True).clamp(max=0), wg.amax(-1, keepdim=True).clamp(min=0)
        s = _fp16((hi - lo) / qmax)
        zq = torch.round(-lo / s).clamp(0, qmax)
        u = (torch.round(wg / s) + zq).clamp_(0, qmax)
    return u, s, zq


def _fp16(s: torch.Tensor) -> torch.Tensor:
    """Scales as they will be stored: fp16, never zero."""
    return s.clamp(1e-7, 65504.0).half().float()


def dequantize_codes(u: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, fmt: str, K: int) -> torch.Tensor:
    """The float ``(N, K)`` weight of grouped codes from :func:`quantize_codes`."""
    spec = format_spec(fmt)
    zero = z if z is not None else spec.z_symmetric
    w = (spec.amul * u - zero) * s
    return w.reshape(w.shape[0], -1)[:, :K]


def quantize_weight(w: torch.Tensor, fmt: str, group_size: int | None = 128, *, symmetric: bool = True) -> PackedWeight:
    """Round-to-nearest quantisation of a float ``(N, K)`` weight into a :class:`PackedWeight`.

    int8/int4/int3/int2: absmax scales (symmetric) or min/max scale and zero point (asymmetric,
    int4/int3/int2); ternary: absmean scale and codes {-1, 0, 1} (BitNet b1.58); binary: absmean scale and sign.
    """
    spec = format_spec(fmt)
    N, K = w.shape
    u, s, zq = quantize_codes(w, fmt, group_size, symmetric=symmetric)
    codes = u.to(torch.uint8).view(N, -1)[:, :K]
    zeros = zq.squeeze(-1).to(torch.uint8) if zq is not None else None
    return PackedWeight(fmt, pack(codes, spec.bits, group_size), s.squeeze(-1).to(torch.float16), zeros, N, K,
                        group_size)


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


def integer_matmul(x: torch.Tensor, w: PackedWeight) -> torch.Tensor:
    """The kernels' arithmetic in pure torch, on any device: ``(..., K) -> (..., N)`` float32.

    Activations are rounded to int8 per row (:func:`quantize_activations`) and multiplied by the integer
    weights ``amul * u - z`` scaled by their fp16 group scales, in float64: every product is exact
    (``|q| <= 127``, ``|amul * u - z| <= 255`` and an fp16 scale need 26 mantissa bits; float64 has 53) and the
    sums carry a relative error near 1e-16, so the result is ``s_x * sum_g s_g * D_g`` rounded once to
    float32, whatever the batch size or summation order. The compiled kernels compute the same value with
    float32 group sums (docs/kernels.md, "Numerics", gives the measured difference). Rows holding NaN or inf take the fp32 ``x @ dequant(W).T``, where those values
    propagate as through ``nn.Linear``; the other rows are unaffected.
    """
    x2 = x.reshape(-1, w.K).float()
    wd = w.dequantize()  # (N, K) float32: exact (integer code times an fp16 scale)
    q, s = quantize_activations(x2)
    y = ((q.double() @ wd.double().T) * s.double()).float()
    finite = torch.isfinite(x2).all(dim=-1, keepdim=True)
    if x2.device.type != "cpu":  # no host sync: both, and the finite rows keep the integer result
        y = torch.where(finite, y, x2 @ wd.T)
    elif not bool(finite.all()):
        bad = ~finite.squeeze(-1)
        y[bad] = x2[bad] @ wd.T
    return y.reshape(*x.shape[:-1], w.N)
