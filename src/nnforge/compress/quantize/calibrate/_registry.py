"""The registry of weight calibrators: how :class:`~nnforge.compress.WeightOnlyConfig` turns one matrix into
packed codes, looked up by the config's ``calibrator`` name.

A calibrator registers itself from its own module with :func:`register_calibrator`; nothing else names it.
It receives a :class:`CalibrationJob` and returns the packed weight and, when it rescales input channels
(AWQ), the per-input-channel scale the layer divides its input by.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from nnforge.compress.quantize.kernels import PackedWeight
from nnforge.registry import Registry

__all__ = ["CALIBRATORS", "CalibrationJob", "CalibratorSpec", "register_calibrator"]


@dataclass(frozen=True)
class CalibrationJob:
    """One matrix to quantize, and everything a calibrator may use.

    Args:
        w: the float32 ``(N, K)`` weight, on the CPU.
        fmt / group_size / symmetric: the packed format asked for (``group_size=None``: one scale per row).
        stats: the layer's input statistics (:class:`~nnforge.compress.quantize.calibrate.LayerStats`) for a
            calibrator registered with ``needs_data=True``; ``None`` otherwise.
        options: the config's calibrator options (``damp``, ``act_order`` and ``calibrator_options``).
    """

    w: torch.Tensor
    fmt: str
    group_size: int | None
    symmetric: bool
    stats: Any = None
    options: dict[str, Any] = field(default_factory=dict)


Quantize = Callable[[CalibrationJob], tuple[PackedWeight, torch.Tensor | None]]


@dataclass(frozen=True)
class CalibratorSpec:
    """What the registry knows about one calibrator.

    Args:
        name: the public name (``calibrator="gptq"``).
        quantize: ``quantize(job) -> (packed, input_scale or None)``.
        needs_data: it reads a Linear layer's input statistics, so ``quantize_`` needs ``calibration=``
            batches; Embedding and Conv2d layers (no statistics collected) are rounded to nearest instead.
        input_scale: it returns a per-input-channel scale the layer divides its input by (a skeleton layer
            then carries an ``input_scale`` buffer for the saved one to fill).
        summary: one line for listings and docs.
    """

    name: str
    quantize: Quantize
    needs_data: bool = False
    input_scale: bool = False
    summary: str = ""


CALIBRATORS: Registry[CalibratorSpec] = Registry("calibrator")


def register_calibrator(name: str, *, needs_data: bool = False, input_scale: bool = False,
                        summary: str = "") -> Callable[[Quantize], Quantize]:
    """Decorator registering ``quantize(job) -> (packed, input_scale or None)`` as calibrator ``name``."""

    def decorator(fn: Quantize) -> Quantize:
        CALIBRATORS.add(name, CalibratorSpec(name, fn, needs_data, input_scale, summary or (fn.__doc__ or "").strip()))
        return fn

    return decorator
