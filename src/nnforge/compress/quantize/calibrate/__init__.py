"""Weight-quantisation calibrators that produce :class:`~nnforge.compress.quantize.kernels.PackedWeight`.

- :func:`rtn`: round-to-nearest (the baseline, :func:`~nnforge.compress.quantize.kernels.quantize_weight`);
- :func:`hqq`: Half-Quadratic Quantization, data-free, never worse than RTN in weight error;
- :func:`gptq`: GPTQ, second-order error feedback from the input Hessian of :func:`collect_stats`;
- :func:`awq`: AWQ, activation-aware per-input-channel scales (the layer must divide its input by them);
- :func:`smooth_scales`, :func:`hadamard`, :func:`fake_quant_int8_per_token`,
  :func:`fake_quant_int8_per_tensor`: SmoothQuant / rotation helpers for W8A8.

>>> import torch
>>> from torch import nn
>>> from nnforge.compress.quantize.calibrate import collect_stats, gptq, rtn
>>> _ = torch.manual_seed(0)
>>> model = nn.Sequential(nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 64))
>>> stats = collect_stats(model, [torch.randn(64, 256) for _ in range(4)])
>>> W, X = model[0].weight.detach(), stats["0"].sample
>>> pw = gptq(W, stats["0"].hessian, "int4", group_size=64)
>>> err = lambda p: float((X @ W.T - X @ p.dequantize().T).norm())
>>> err(pw) < err(rtn(W, "int4", 64))
True

The calibrators have different inputs, so :data:`CALIBRATORS` maps each name to its function as is:
``rtn(w, fmt, group_size)`` and ``hqq(w, fmt, group_size)`` need only the weight, ``gptq(w, stats.hessian,
fmt, group_size)`` the Hessian, and ``awq(w, stats, fmt, group_size)`` returns ``(packed, s)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from nnforge.compress.quantize.calibrate.awq import awq
from nnforge.compress.quantize.calibrate.gptq import gptq
from nnforge.compress.quantize.calibrate.hqq import hqq
from nnforge.compress.quantize.calibrate.smooth import (
    fake_quant_int8_per_tensor,
    fake_quant_int8_per_token,
    hadamard,
    smooth_scales,
)
from nnforge.compress.quantize.calibrate.stats import LayerStats, collect_stats
from nnforge.compress.quantize.kernels import PackedWeight, quantize_weight

__all__ = [
    "CALIBRATORS",
    "LayerStats",
    "awq",
    "collect_stats",
    "fake_quant_int8_per_tensor",
    "fake_quant_int8_per_token",
    "gptq",
    "hadamard",
    "hqq",
    "rtn",
    "smooth_scales",
]


def rtn(w: torch.Tensor, fmt: str, group_size: int | None = 128, *, symmetric: bool = True) -> PackedWeight:
    """Round-to-nearest, the baseline every calibrator is measured against: absmax (symmetric), min/max
    (asymmetric) or absmean (ternary and binary, as in Ma et al. 2024, "The Era of 1-bit LLMs: All Large
    Language Models are in 1.58 Bits") group scales; the same as
    :func:`~nnforge.compress.quantize.kernels.quantize_weight`."""
    return quantize_weight(w, fmt, group_size, symmetric=symmetric)


CALIBRATORS: dict[str, Callable[..., Any]] = {"rtn": rtn, "hqq": hqq, "gptq": gptq, "awq": awq}
