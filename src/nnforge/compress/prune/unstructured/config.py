"""Configs of mask-free weight pruning: unstructured sparsity and N:M patterns (2:4, 4:8)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field, model_validator

from nnforge.config import Config, config_type
from nnforge.errors import ConfigError

__all__ = ["UnstructuredConfig", "NMConfig"]


def _registered_criterion(name: str) -> str:
    from nnforge.compress.prune.criteria import CRITERIA

    CRITERIA.get(name, where="criterion")  # unknown: "did you mean …" with the known names
    return name


Criterion = Annotated[str, AfterValidator(_registered_criterion)]
Modules = tuple[Literal["linear", "conv"], ...]


class _PruneOptions(Config):
    """What every mask-free pruning config shares.

    Args:
        criterion: a registered criterion (:data:`~nnforge.compress.prune.criteria.CRITERIA`): ``magnitude``
            (no data), ``wanda`` or ``sparsegpt`` (both need ``calibration=`` batches).
        modules: which layer types to prune: ``linear`` and ``conv`` (Conv2d; data-driven criteria see its
            kernel as the ``(out, in·kh·kw)`` matrix and its inputs as im2col patches, groups=1 only).
        skip: module names (exact, or a prefix ending in ``.``) left dense, e.g. the LM head.
        damp / block_size: SparseGPT's relative diagonal damping and column block (as GPTQ's).
        sequential: for a data-driven criterion, prune the layers one at a time in the model's order, each
            calibrated on the inputs the layers pruned before it produce (as the Wanda and SparseGPT reference
            implementations do block by block); one calibration pass per layer instead of one in all.
    """

    criterion: Criterion = "magnitude"
    modules: Modules = ("linear",)
    skip: tuple[str, ...] = Field(default_factory=tuple)
    damp: float = Field(0.01, gt=0.0, lt=1.0)
    block_size: int = Field(128, ge=1)
    sequential: bool = False


@config_type("unstructured")
class UnstructuredConfig(_PruneOptions):
    """Zero a fraction of each layer's weights (or of all of them), chosen by a criterion.

    The zeros stay in the dense weight: the model gets no smaller and no faster until a sparse format
    stores and runs them, and the report says so.

    Args:
        sparsity: the fraction of weights to zero, in [0, 1).
        scope: ``layer`` gives every layer ``sparsity``; ``global`` ranks the weights of all pruned layers
            together by the criterion's score, so layers get different ratios meeting ``sparsity`` overall.
        compare: ``auto`` uses the criterion's own comparison group (per output row for Wanda, the whole
            matrix otherwise); ``row`` or ``layer`` forces one (layer-wise scope only).
        plan: per-module sparsity overriding ``sparsity`` (an allocator's non-uniform ratios,
            :func:`~nnforge.compress.prune.allocate.allocate_sparsity`); 0 keeps a module dense.
    """

    sparsity: float = Field(0.5, ge=0.0, lt=1.0)
    scope: Literal["layer", "global"] = "layer"
    compare: Literal["auto", "layer", "row"] = "auto"
    plan: dict[str, Annotated[float, Field(ge=0.0, lt=1.0)]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _check(self) -> UnstructuredConfig:
        if self.scope == "global" and self.plan:
            raise ConfigError("UnstructuredConfig: scope='global' chooses every layer's ratio itself, so it cannot "
                              "take a 'plan' too; give either scope='global' or a plan with scope='layer'")
        if self.scope == "global" and self.compare != "auto":
            raise ConfigError(f"UnstructuredConfig: compare={self.compare!r} ranks within one layer or row, and "
                              "scope='global' ranks all layers' weights together; leave compare='auto' for global scope")
        return self


@config_type("nm")
class NMConfig(_PruneOptions):
    """N:M sparsity: keep ``n`` of every ``m`` consecutive input weights of each output row (2:4, 4:8).

    A layer whose input dimension is not a multiple of ``m`` is reported as skipped.
    """

    n: int = Field(2, ge=1)
    m: int = Field(4, ge=2)

    @model_validator(mode="after")
    def _check(self) -> NMConfig:
        if self.n >= self.m:
            raise ConfigError(f"The 'n' parameter of NMConfig must be smaller than 'm' ({self.m}). Got {self.n} instead.")
        return self
