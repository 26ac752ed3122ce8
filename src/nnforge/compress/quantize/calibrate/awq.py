"""AWQ: activation-aware per-input-channel weight scaling, searched on a sample of the layer's inputs."""

from __future__ import annotations

from collections.abc import Callable

import torch

from nnforge.compress.quantize.calibrate._common import check_group, check_int, check_weight, make_grid
from nnforge.compress.quantize.calibrate._registry import CalibrationJob, register_calibrator
from nnforge.compress.quantize.calibrate.hqq import hqq
from nnforge.compress.quantize.calibrate.stats import LayerStats
from nnforge.compress.quantize.kernels import PackedWeight, quantize_weight
from nnforge.errors import ConfigError

__all__ = ["awq"]


def awq(w: torch.Tensor, stats: LayerStats, fmt: str, group_size: int | None = 128, *, symmetric: bool = True,
        grid: int = 20, quantizer: Callable[[torch.Tensor], PackedWeight] | None = None
        ) -> tuple[PackedWeight, torch.Tensor]:
    """Activation-aware Weight Quantization (Lin et al. 2024, "AWQ: Activation-aware Weight Quantization
    for LLM Compression and Acceleration"): protect the weights of salient input channels by scaling them up
    before quantisation and the activations down by the same factor.

    For ``alpha`` in ``0, 1/grid, ..., (grid-1)/grid`` the per-input-channel scale is
    ``s = mean|x|^alpha`` (from ``stats.abs_mean``, clamped at 1e-4) normalised by ``sqrt(max(s) min(s))``;
    ``W·diag(s)`` is quantised with RTN (:func:`~nnforge.compress.quantize.kernels.quantize_weight`, or
    ``quantizer(w_scaled)`` when given, e.g. ``lambda w: hqq(w, fmt, group_size)``) and the output error
    ``||X Wᵀ - (X / s) Q(W s)ᵀ||²`` is measured on ``stats.sample``. The best ``alpha`` wins; ``alpha = 0``
    is ``s = 1``, plain RTN (or plain ``quantizer(w)``), so the result is never worse on the sample.

    Returns ``(packed Q(W·s), s)`` with ``s`` float32 ``(K,)``: the layer must compute ``(x / s) @ Q(W s)ᵀ``
    (or fold ``1 / s`` into whatever produces ``x``).
    """
    W = check_weight(w)
    N, K = W.shape
    if quantizer is None:
        spec_grid = make_grid(fmt, symmetric)
        check_group(K, spec_grid.spec.bits, group_size)
    elif not callable(quantizer):
        raise ConfigError(f"The 'quantizer' parameter must be a function w -> PackedWeight or None. "
                          f"Got {type(quantizer).__name__} instead.")
    check_int("grid", grid, 1)
    if not isinstance(stats, LayerStats):
        raise ConfigError(f"The 'stats' parameter must be a LayerStats (from collect_stats). Got {type(stats).__name__} instead.")
    if tuple(stats.abs_mean.shape) != (K,) or stats.sample.dim() != 2 or stats.sample.shape[1] != K:
        raise ConfigError(f"The 'stats' parameter does not match the weight: abs_mean must be ({K},) and sample (n, {K}). "
                          f"Got {tuple(stats.abs_mean.shape)} and {tuple(stats.sample.shape)} instead.")
    if stats.sample.shape[0] == 0:
        raise ConfigError("The 'stats' parameter holds no sample rows: collect statistics with sample_rows > 0.")

    def quant(wq: torch.Tensor) -> PackedWeight:
        if quantizer is not None:
            return quantizer(wq)
        return quantize_weight(wq, fmt, group_size, symmetric=symmetric)

    X = stats.sample.detach().to(device="cpu", dtype=torch.float32)
    ref = X @ W.T
    x_mean = stats.abs_mean.detach().to(device="cpu", dtype=torch.float32)
    best: tuple[float, PackedWeight, torch.Tensor] | None = None
    for i in range(grid):
        alpha = i / grid
        s = x_mean.pow(alpha).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        pw = quant(W * s)
        if not isinstance(pw, PackedWeight) or (pw.N, pw.K) != (N, K):
            raise ConfigError(f"The 'quantizer' must return a PackedWeight of shape ({N}, {K}). Got {pw!r:.80} instead.")
        err = float((ref - (X / s) @ pw.dequantize().T).pow(2).sum())
        if best is None or err < best[0]:
            best = (err, pw, s)
    assert best is not None
    return best[1], best[2].contiguous()


@register_calibrator("awq", needs_data=True, input_scale=True, summary="activation-aware input-channel scales")
def _awq(job: CalibrationJob) -> tuple[PackedWeight, torch.Tensor]:
    return awq(job.w, job.stats, job.fmt, job.group_size, symmetric=job.symmetric)


@register_calibrator("awq+hqq", needs_data=True, input_scale=True, summary="AWQ's scales, HQQ's rounding")
def _awq_hqq(job: CalibrationJob) -> tuple[PackedWeight, torch.Tensor]:
    def quantizer(ws: torch.Tensor) -> PackedWeight:
        return hqq(ws, job.fmt, job.group_size, symmetric=job.symmetric)

    return awq(job.w, job.stats, job.fmt, job.group_size, symmetric=job.symmetric, quantizer=quantizer)
