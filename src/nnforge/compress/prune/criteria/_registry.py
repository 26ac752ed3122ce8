"""The registry of pruning criteria: how a pruning config decides which weights of one matrix to zero.

A criterion registers itself from its own module with :func:`register_criterion`; nothing else names it.
It receives a :class:`PruneJob` (the weight, the pattern of zeros asked for and, for a data-driven
criterion, the layer's input statistics) and returns the pruned weight. Its ``score`` ranks weights by
importance (larger is kept); a config with ``scope="global"`` uses it to share one threshold between layers,
and structured pruning may sum it over a neuron or a head.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from nnforge.errors import ConfigError
from nnforge.registry import Registry

__all__ = ["CRITERIA", "CriterionSpec", "Pattern", "PruneJob", "register_criterion", "keep_mask"]


@dataclass(frozen=True)
class Pattern:
    """Which zeros a matrix may have.

    Args:
        sparsity: the fraction of weights to zero (unstructured); ignored for N:M.
        n / m: keep ``n`` of every ``m`` consecutive weights along the input dimension (N:M, e.g. 2:4);
            ``None`` for unstructured.
        compare: ``"layer"`` ranks all weights of the matrix together, ``"row"`` each output row on its own
            (every row then has the same sparsity; Wanda's per-output comparison).
    """

    sparsity: float = 0.0
    n: int | None = None
    m: int | None = None
    compare: Literal["layer", "row"] = "layer"

    @property
    def is_nm(self) -> bool:
        return self.m is not None

    @property
    def target(self) -> float:
        """The fraction of zeros the pattern asks for."""
        return 1.0 - self.n / self.m if self.n is not None and self.m is not None else self.sparsity

    def describe(self) -> str:
        return f"{self.n}:{self.m}" if self.is_nm else f"unstructured ({self.compare}-wise)"


@dataclass(frozen=True)
class PruneJob:
    """One matrix to prune, and everything a criterion may use.

    Args:
        w: the float32 ``(N, K)`` weight on the CPU (a conv kernel flattened to ``(out, in * kh * kw)``).
        pattern: the zeros asked for.
        stats: the layer's :class:`~nnforge.compress.quantize.calibrate.LayerStats` for a criterion
            registered with ``needs_data=True``; ``None`` otherwise.
        options: the config's criterion options (``damp``, ``block_size``).
    """

    w: torch.Tensor
    pattern: Pattern
    stats: Any = None
    options: dict[str, Any] = field(default_factory=dict)


Prune = Callable[[PruneJob], torch.Tensor]
Score = Callable[[PruneJob], torch.Tensor]


@dataclass(frozen=True)
class CriterionSpec:
    """What the registry knows about one criterion.

    Args:
        name: the public name (``criterion="wanda"``).
        prune: ``prune(job) -> pruned (N, K) weight``: zeros exactly where the pattern allows, and the kept
            weights as the criterion leaves them (a reconstructing criterion, SparseGPT, updates them).
        score: ``score(job) -> (N, K)`` importance, larger kept: comparable between layers for global scope.
        needs_data: it reads a Linear layer's input statistics, so ``prune_`` needs ``calibration=`` batches
            (and other layer types, conv, cannot use it).
        summary: one line for listings and docs.
    """

    name: str
    prune: Prune
    score: Score
    needs_data: bool = False
    compare: Literal["layer", "row"] = "layer"
    summary: str = ""


CRITERIA: Registry[CriterionSpec] = Registry("pruning criterion")


def register_criterion(name: str, *, score: Score, needs_data: bool = False,
                       compare: Literal["layer", "row"] = "layer", summary: str = "") -> Callable[[Prune], Prune]:
    """Decorator registering ``prune(job) -> pruned weight`` as criterion ``name``.

    Args:
        score: the importance of each weight (larger kept); see :class:`CriterionSpec`.
        compare: the comparison group the criterion is meant for when a config leaves it to the criterion.
    """

    def decorator(fn: Prune) -> Prune:
        CRITERIA.add(name, CriterionSpec(name, fn, score, needs_data, compare, summary or (fn.__doc__ or "").strip()))
        return fn

    return decorator


def keep_mask(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """The boolean ``(N, K)`` mask of the weights ``pattern`` keeps, the highest ``scores`` first.

    Unstructured: exactly ``round(sparsity * count)`` weights are dropped per comparison group (the matrix,
    or each row), the lowest scores (ties broken by position, so the result is deterministic). N:M: the
    ``n`` highest of every ``m`` consecutive weights of a row are kept; ``K`` must be a multiple of ``m``.
    """
    N, K = scores.shape
    if pattern.n is not None and pattern.m is not None:
        n, m = pattern.n, pattern.m
        if K % m:
            raise ConfigError(f"an {n}:{m} pattern needs the input dimension to be a multiple of {m}; this layer has "
                              f"{K} inputs. Prune it unstructured, or leave it out with filter= or skip=")
        groups = scores.reshape(N, K // m, m)
        top = torch.topk(groups, n, dim=-1, sorted=False).indices
        keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top, True)
        return keep.reshape(N, K)
    flat = scores.reshape(1, -1) if pattern.compare == "layer" else scores
    drop = round(pattern.sparsity * flat.shape[1])
    keep = torch.ones_like(flat, dtype=torch.bool)
    if drop:
        order = torch.argsort(flat, dim=1, stable=True)
        keep.scatter_(1, order[:, :drop], False)
    return keep.reshape(N, K)
