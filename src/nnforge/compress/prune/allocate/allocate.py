"""Allocate one sparsity per layer under a budget of overall sparsity, FLOPs or measured latency."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from nnforge.compress._allocate import greedy_allocate
from nnforge.compress.prune.allocate.sensitivity import SparsityOption
from nnforge.errors import ConfigError

__all__ = ["SparsityPlan", "allocate_sparsity"]

Budget = Literal["sparsity", "flops", "latency_ms"]


@dataclass
class SparsityPlan:
    """The chosen sparsity per layer, and what it adds up to."""

    ratios: dict[str, float]
    total_error: float
    sparsity: float  # zeros / weights over the allocated layers
    flops: float
    latency_ms: float | None
    per_layer: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"ratios": self.ratios, "total_error": self.total_error, "sparsity": self.sparsity,
                "flops": self.flops, "latency_ms": self.latency_ms, "per_layer": self.per_layer}


def _cost(option: SparsityOption, kind: Budget) -> float:
    if kind == "latency_ms":
        if option.latency_ms is None:
            raise ConfigError("a latency budget needs measured latencies: prune_sensitivity(..., "
                              "sparse_execution=SparseExecution()) or prune_sensitivity(..., latency_fn=...)")
        return option.latency_ms
    return float(option.kept) if kind == "sparsity" else option.flops


def allocate_sparsity(sensitivity: dict[str, list[SparsityOption]], budget: float,
                      kind: Budget = "sparsity") -> SparsityPlan:
    """Pick a sparsity per layer meeting the budget with the least total error (the greedy allocator that
    mixed-precision quantization uses, :func:`nnforge.compress._allocate.greedy_allocate`).

    Args:
        budget: ``sparsity``: the overall fraction of zeros to reach at least, in (0, 1); ``flops``: the
            fraction of the dense multiply-adds to keep at most, in (0, 1]; ``latency_ms``: the summed
            measured time of the layers at most (measured by ``prune_sensitivity(latency_fn=...)``, or with
            ``sparse_execution=SparseExecution()`` as each layer would run: sparse only where its kernel's
            verdict says faster; ``per_layer`` then says which).

    Returns a :class:`SparsityPlan`; ``UnstructuredConfig(plan=plan.ratios)`` prunes as planned.

    Raises:
        ConfigError: a bad budget, or no assignment meets it (the closest is named).
    """
    if kind not in ("sparsity", "flops", "latency_ms"):
        raise ConfigError(f"kind must be one of sparsity, flops, latency_ms. Got {kind!r} instead.")
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0 or budget == float("inf") \
            or (kind == "sparsity" and budget >= 1) or (kind == "flops" and budget > 1):
        allowed = {"sparsity": "in (0, 1)", "flops": "in (0, 1]", "latency_ms": "positive and finite"}[kind]
        raise ConfigError(f"The 'budget' parameter for kind={kind!r} must be {allowed}. Got {budget!r} instead.")
    if not sensitivity or any(not opts for opts in sensitivity.values()):
        raise ConfigError("The 'sensitivity' parameter needs at least one option per layer: "
                          "measure them with prune_sensitivity() first.")
    params = sum(opts[0].params for opts in sensitivity.values())
    dense_flops = sum(max(o.flops for o in opts) for opts in sensitivity.values())
    limit = {"sparsity": (1.0 - budget) * params, "flops": budget * dense_flops, "latency_ms": budget}[kind]
    chosen = greedy_allocate(sensitivity, lambda o: _cost(o, kind), limit)
    if chosen is None:
        best = sum(min(_cost(o, kind) for o in opts) for opts in sensitivity.values())
        reach = {"sparsity": 1.0 - best / params, "flops": best / max(dense_flops, 1e-30), "latency_ms": best}[kind]
        raise ConfigError(f"no sparsity assignment meets {kind} budget {budget}: the measured levels reach at best "
                          f"{reach:.4g}; measure higher levels with prune_sensitivity(levels=...)")
    lat = [o.latency_ms for o in chosen.values()]
    return SparsityPlan(ratios={n: o.sparsity for n, o in chosen.items()},
                        total_error=sum(o.error for o in chosen.values()),
                        sparsity=1.0 - sum(o.kept for o in chosen.values()) / params,
                        flops=sum(o.flops for o in chosen.values()),
                        latency_ms=sum(v for v in lat if v is not None) if all(v is not None for v in lat) else None,
                        per_layer=[{"module": n, "sparsity": o.sparsity, "error": o.error, "kept": o.kept,
                                    "flops": o.flops, "latency_ms": o.latency_ms, "execution": o.execution}
                                   for n, o in chosen.items()])
