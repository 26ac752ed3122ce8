"""Config of W8A8: int8 weights and int8 activations."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nnforge.config import Config, config_type

__all__ = ["W8A8Config"]


@config_type("w8a8")
class W8A8Config(Config):
    """int8 weights (one scale per output channel) and int8 activations.

    Args:
        activations: ``dynamic`` (one scale per token, computed on the fly) or ``static`` (one scale per
            tensor, calibrated on ``calibration`` batches).
        smoothing: ``smoothquant`` migrates activation outliers into the weights (Xiao et al. 2023) using
            per-channel maxima from the calibration batches; ``none`` quantizes as is.
        alpha: SmoothQuant's migration strength (0: all on activations, 1: all on weights).
        calibrator: how the int8 weights are rounded: ``rtn`` (to nearest) or ``gptq`` (second-order error
            feedback on the calibration inputs, after smoothing; on MiniLM it takes the weight-only cosine from
            0.99948 to 0.99983). ``gptq`` needs ``calibration`` batches.
        damp: GPTQ's relative diagonal damping.
        modules: Linear layers only (embeddings have no activations to quantize).
    """

    activations: Literal["dynamic", "static"] = "dynamic"
    smoothing: Literal["none", "smoothquant"] = "smoothquant"
    alpha: float = Field(0.5, ge=0.0, le=1.0)
    calibrator: Literal["rtn", "gptq"] = "rtn"
    damp: float = Field(0.01, gt=0.0, le=1.0)
    kernel: bool = True
