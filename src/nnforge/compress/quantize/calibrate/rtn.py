"""Round-to-nearest: the baseline every calibrator is measured against."""

from __future__ import annotations

import torch

from nnforge.compress.quantize.calibrate._registry import CalibrationJob, register_calibrator
from nnforge.compress.quantize.kernels import PackedWeight, quantize_weight

__all__ = ["rtn"]


def rtn(w: torch.Tensor, fmt: str, group_size: int | None = 128, *, symmetric: bool = True) -> PackedWeight:
    """Round-to-nearest, the baseline every calibrator is measured against: absmax (symmetric), min/max
    (asymmetric) or absmean (ternary and binary, as in Ma et al. 2024, "The Era of 1-bit LLMs: All Large
    Language Models are in 1.58 Bits") group scales; the same as
    :func:`~nnforge.compress.quantize.kernels.quantize_weight`."""
    return quantize_weight(w, fmt, group_size, symmetric=symmetric)


@register_calibrator("rtn", summary="round to nearest (no data)")
def _rtn(job: CalibrationJob) -> tuple[PackedWeight, None]:
    return rtn(job.w, job.fmt, job.group_size, symmetric=job.symmetric), None
