"""Config of quantization-aware training."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from nnforge.compress.quantize.weight_only.config import Format, GroupSize, check_symmetric
from nnforge.config import Config, config_type

__all__ = ["QATConfig"]


@config_type("qat")
class QATConfig(Config):
    """Fake-quantized training: weights (and optionally activations) rounded in the forward pass, gradients
    passed straight through (STE). The defaults are the BitNet b1.58 recipe: absmean ternary weights per
    output channel and 8-bit absmax activations per token.

    Args:
        fmt / group_size / symmetric: the weight format trained for (any weight-only format).
        activations: ``8`` rounds each Linear's input to int8 per token; ``None`` keeps it in float.
        skip: module names (exact, or a prefix ending in ``.``) kept in full precision, e.g. the LM head.
        embeddings: also fake-quantize Embedding tables (at ``embedding_fmt``).
    """

    fmt: Format = "ternary"
    group_size: GroupSize = None
    symmetric: bool = True
    activations: Literal[8] | None = 8
    skip: tuple[str, ...] = Field(default_factory=tuple)
    embeddings: bool = False
    embedding_fmt: Format = "int8"

    @model_validator(mode="after")
    def _check(self) -> QATConfig:
        check_symmetric("fmt", self.fmt, self.symmetric)
        return self
