"""Config of int8 weight-only quantization."""

from __future__ import annotations

from typing import Literal

from nnforge.config import Config, config_type

__all__ = ["Int8WeightOnlyConfig"]


@config_type("int8-weight-only")
class Int8WeightOnlyConfig(Config):
    """Symmetric int8 weights with one fp32 scale per output channel (per row for embeddings).

    Args:
        modules: which module types to quantize.
    """

    modules: tuple[Literal["linear", "embedding"], ...] = ("linear", "embedding")
