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

The calibrators have different inputs, so each is a plain function as above; :data:`CALIBRATORS` is the
registry that :class:`~nnforge.compress.WeightOnlyConfig` looks ``calibrator=`` up in, filled by each
calibrator's own module (:func:`register_calibrator`): every public module of this folder is imported here,
so a new calibrator is one new file.
"""

from __future__ import annotations

from nnforge.compress.quantize.calibrate._registry import (
    CALIBRATORS,
    CalibrationJob,
    CalibratorSpec,
    register_calibrator,
)
from nnforge.compress.quantize.calibrate.awq import awq
from nnforge.compress.quantize.calibrate.gptq import gptq
from nnforge.compress.quantize.calibrate.hqq import hqq
from nnforge.compress.quantize.calibrate.rtn import rtn
from nnforge.compress.quantize.calibrate.smooth import (
    fake_quant_int8_per_tensor,
    fake_quant_int8_per_token,
    hadamard,
    smooth_scales,
)
from nnforge.compress.quantize.calibrate.stats import LayerStats, collect_stats
from nnforge.registry import import_submodules

__all__ = [
    "CALIBRATORS",
    "CalibrationJob",
    "CalibratorSpec",
    "LayerStats",
    "awq",
    "collect_stats",
    "fake_quant_int8_per_tensor",
    "fake_quant_int8_per_token",
    "gptq",
    "hadamard",
    "hqq",
    "register_calibrator",
    "rtn",
    "smooth_scales",
]

import_submodules(__name__, __path__)  # every calibrator module registers itself
