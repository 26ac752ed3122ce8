"""Adafactor, torch's implementation (Shazeer & Stern 2018, "Adafactor: Adaptive Learning Rates with
Sublinear Memory Cost").

Second moments of matrices are kept as row and column factors: memory O(m + n) instead of O(m n).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from nnforge.config import Config, config_type
from nnforge.optim._base import LR, Eps, WeightDecay
from nnforge.optim._registry import like_param, register_optimizer, scalar

__all__ = ["AdafactorConfig"]


@config_type("optim.adafactor")
class AdafactorConfig(Config):
    """Options of torch's Adafactor."""

    lr: LR = 1e-2
    beta2_decay: float = Field(-0.8, le=0.0, description="decay exponent of beta2 (beta2_t = 1 - t^decay)")
    d: float = Field(1.0, gt=0.0, description="clipping threshold of the update's RMS")
    eps: Eps = 1e-3
    weight_decay: WeightDecay = 0.0


def _row_factor(shape: tuple[int, ...]) -> set[tuple[int, ...]]:
    """torch's Adafactor keeps a matrix's second moment as row means (last dimension reduced) ..."""
    return {(*shape[:-1], 1)}


def _col_factor(shape: tuple[int, ...]) -> set[tuple[int, ...]]:
    """... and column means (second-to-last dimension reduced)."""
    return {(*shape[:-2], 1, shape[-1])}


@register_optimizer("adafactor", AdafactorConfig,
                    "Shazeer & Stern (2018), Adafactor: Adaptive Learning Rates with Sublinear Memory Cost",
                    state={"step": scalar, "row_var": _row_factor, "col_var": _col_factor, "variance": like_param})
def build_adafactor(params: list[Any], config: AdafactorConfig) -> torch.optim.Optimizer:
    """torch.optim.Adafactor with ``config``'s options."""
    return torch.optim.Adafactor(params, lr=config.lr, beta2_decay=config.beta2_decay, eps=(None, config.eps),
                                 d=config.d, weight_decay=config.weight_decay)
