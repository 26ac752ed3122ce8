"""Config of structured pruning: whole heads, FFN neurons, conv channels and blocks, physically removed."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from nnforge.config import Config, config_type

__all__ = ["StructuredPruneConfig"]


@config_type("structured")
class StructuredPruneConfig(Config):
    """Remove a fraction of the units of every prunable structure: the pruned layers are smaller matrices.

    The default removes half of the heads, FFN neurons and conv channels, and no block.

    Each fraction is of the units of one structure (per attention module, per FFN, per conv), not global; the
    kept count is ``round(units * (1 - fraction))``, at least one, rounded to a multiple of ``multiple_of`` (up unless ``rounding="down"``).

    Args:
        heads: fraction of attention heads removed in every attention module (char-GPT, BERT-family).
        ffn: fraction of hidden neurons removed in every feed-forward pair (a Linear, an element-wise
            activation, a Linear: char-GPT's MLP, BERT's intermediate/output, any such chain torch.fx finds).
        channels: fraction of output channels removed in every Conv2d whose only consumer is a Conv2d or,
            through a flatten, a Linear (a BatchNorm between them is cut to match).
        blocks: fraction of transformer blocks removed whole: those that change their input least (angular
            distance between a block's input and output on the calibration batches, as in ShortGPT).
        criterion: how units are ranked: a registered criterion
            (:data:`~nnforge.compress.prune.criteria.CRITERIA`) scores each weight of the layer reading the
            units, and a unit's score is the sum over its input columns there (its outgoing weights):
            ``magnitude`` (``|W|``, no data), ``wanda`` (``|W| * ||X||``) or ``sparsegpt`` (the OBS saliency),
            the last two from ``calibration=`` batches (statistics of Linear inputs: not for conv channels).
        multiple_of: kept counts of FFN neurons and channels are rounded to a multiple of this (8, 16 or 32
            keeps matrix widths friendly to SIMD and GEMM kernels: an FFN of 922 neurons can run slower than
            one of 896).
        rounding: ``"up"`` keeps the next multiple (removes at most the fraction), ``"down"`` the one below
            (removes at least the fraction; a count under one multiple stays as it is).
        shapes: kept units per structure, by module name (heads for an attention module, neurons for an FFN's
            first Linear, channels for a conv, 1 or 0 for a block). A named structure is pruned to that count
            (non-uniform ratios, e.g. from an allocator); the others follow the fractions. ``prune_`` fills it
            in for every structure in the report's config, which is what a saved variant stores, so that
            ``rebuild`` makes the pruned shapes again with no mask.
    """

    heads: float = Field(0.5, ge=0.0, lt=1.0)
    ffn: float = Field(0.5, ge=0.0, lt=1.0)
    channels: float = Field(0.5, ge=0.0, lt=1.0)
    blocks: float = Field(0.0, ge=0.0, lt=1.0)
    criterion: str = "magnitude"
    multiple_of: int = Field(1, ge=1, le=256)
    rounding: Literal["up", "down"] = "up"
    shapes: dict[str, int] = Field(default_factory=dict)

    @field_validator("criterion")
    @classmethod
    def _registered_criterion(cls, v: str) -> str:
        from nnforge.compress.prune.criteria import CRITERIA

        CRITERIA.get(v, where="criterion")  # unknown: "did you mean …" with the known names
        return v

    @field_validator("shapes")
    @classmethod
    def _counts_are_not_negative(cls, v: dict[str, int]) -> dict[str, int]:
        bad = {k: n for k, n in v.items() if n < 0}
        if bad:
            name, n = next(iter(bad.items()))
            raise ValueError(f"shapes[{name!r}] must be a kept count >= 0; got {n}")
        return v
