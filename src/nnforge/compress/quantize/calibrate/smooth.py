"""Outlier handling for W8A8: SmoothQuant scales, Hadamard rotations, and int8 fake quantisation."""

from __future__ import annotations

import torch

from nnforge.compress.quantize.calibrate._common import check_range
from nnforge.errors import ConfigError

__all__ = ["smooth_scales", "hadamard", "fake_quant_int8_per_token", "fake_quant_int8_per_tensor"]

_MIN = 1e-5  # floor of both the activation and the weight maxima, as in the SmoothQuant reference code


def smooth_scales(act_abs_max: torch.Tensor, w: torch.Tensor, alpha: float = 0.5) -> torch.Tensor:
    """SmoothQuant (Xiao et al. 2023, "SmoothQuant: Accurate and Efficient Post-Training Quantization for
    Large Language Models"): per-input-channel scales that move activation outliers into the weights.

    ``s_j = max|X_j|^alpha / max_i |W_ij|^(1 - alpha)`` with both maxima floored at 1e-5 (no 0 or inf), so
    that ``(X / s) (W s)ᵀ = X Wᵀ`` with both factors equally hard to quantise at ``alpha = 0.5``.
    ``act_abs_max`` is ``(K,)`` (e.g. ``LayerStats.abs_max``), ``w`` is ``(N, K)``. Returns float32 ``(K,)``.
    """
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ConfigError(f"The 'w' parameter must be a 2-D (N, K) weight tensor. Got {got} instead.")
    K = w.shape[1]
    if not isinstance(act_abs_max, torch.Tensor) or tuple(act_abs_max.shape) != (K,):
        got = tuple(act_abs_max.shape) if isinstance(act_abs_max, torch.Tensor) else type(act_abs_max).__name__
        raise ConfigError(f"The 'act_abs_max' parameter must be a ({K},) tensor (one value per input channel of w). "
                          f"Got {got} instead.")
    check_range("alpha", alpha, 0.0, 1.0)
    a = act_abs_max.detach().to(device="cpu", dtype=torch.float32).abs().clamp(min=_MIN)
    m = w.detach().to(device="cpu", dtype=torch.float32).abs().amax(0).clamp(min=_MIN)
    s = a.pow(alpha) / m.pow(1 - alpha)
    return s.clamp(min=_MIN, max=1 / _MIN)


def hadamard(n: int) -> torch.Tensor:
    """The normalised Walsh-Hadamard matrix ``H`` (n, n), float32, ``H Hᵀ = I`` (Sylvester's construction).

    Rotating both sides, ``(X H)(W H)ᵀ = X Wᵀ``, spreads outlier channels over all channels, as QuaRot
    (Ashkboos et al. 2024, "QuaRot: Outlier-Free 4-Bit Inference in Rotated LLMs") and QuIP# (Tseng et al.
    2024) do before quantising. ``n`` must be a power of 2.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1 or n & (n - 1):
        raise ConfigError(f"The 'n' parameter of hadamard must be a power of 2 (1, 2, 4, 8, ...). Got {n!r} instead.")
    H = torch.ones(1, 1, dtype=torch.float64)
    while H.shape[0] < n:
        H = torch.cat([torch.cat([H, H], 1), torch.cat([H, -H], 1)], 0)
    return (H / n**0.5).to(torch.float32)


def fake_quant_int8_per_token(x: torch.Tensor) -> torch.Tensor:
    """Symmetric absmax int8 per row (token): ``round(x / s).clamp(-127, 127) * s``, ``s = max|x_row| / 127``.

    Rounds half to even (``torch.round``) like the kernels' activation quantisation; an all-zero row stays 0.
    """
    xf = x.float()
    s = xf.abs().amax(-1, keepdim=True) / 127.0
    s = torch.where(s > 0, s, torch.ones_like(s))
    return torch.round(xf / s).clamp(-127, 127) * s


def fake_quant_int8_per_tensor(x: torch.Tensor, scale: float | torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric int8 with one scale for the whole tensor: ``round(x / scale).clamp(-127, 127) * scale``.

    ``scale`` is a static calibrated scale (e.g. ``max|X| / 127`` over calibration data); ``None`` uses the
    tensor's own ``max|x| / 127`` (dynamic). Rounds half to even (``torch.round``).
    """
    xf = x.float()
    if scale is None:
        amax = xf.abs().max() if xf.numel() else torch.zeros(())
        if float(amax) == 0:
            return torch.zeros_like(xf)
        scale = amax / 127.0
    st = torch.as_tensor(scale, dtype=torch.float32, device=xf.device)
    if st.numel() != 1 or not bool(torch.isfinite(st)) or float(st) <= 0:
        raise ConfigError(f"The 'scale' parameter must be one finite number > 0 (or None). Got {scale!r} instead.")
    return torch.round(xf / st).clamp(-127, 127) * st
