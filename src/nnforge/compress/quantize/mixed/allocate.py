"""Allocate one format per layer under a budget of average bits, bytes or measured latency."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from nnforge.compress._allocate import greedy_allocate
from nnforge.compress.quantize.mixed.sensitivity import LayerOption
from nnforge.errors import ConfigError

__all__ = ["Plan", "allocate_bits"]

Budget = Literal["avg_bits", "bytes", "latency_ms"]


@dataclass
class Plan:
    """The chosen format per layer, and what it costs in total."""

    formats: dict[str, str]
    total_error: float
    total_bytes: int
    avg_bits: float
    total_latency_ms: float | None
    per_layer: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"formats": self.formats, "total_error": self.total_error, "total_bytes": self.total_bytes,
                "avg_bits": self.avg_bits, "total_latency_ms": self.total_latency_ms, "per_layer": self.per_layer}


def _cost(option: LayerOption, kind: Budget) -> float:
    if kind == "latency_ms":
        if option.latency_ms is None:
            raise ConfigError("a latency budget needs measured latencies: layer_sensitivity(..., measure_latency=True)")
        return option.latency_ms
    return float(option.nbytes)


def allocate_bits(sensitivity: dict[str, list[LayerOption]], budget: float, kind: Budget = "avg_bits") -> Plan:
    """Pick a format per layer so that the budget holds with the least total error (greedy).

    Every layer starts at its most expensive option; the step with the smallest error increase per unit of
    budget saved is taken until the total fits (:func:`nnforge.compress._allocate.greedy_allocate`, which
    pruning's allocator shares). ``budget`` is average bits per weight (``avg_bits``), total
    bytes (``bytes``) or the summed batch-1 latency of the layers (``latency_ms``). A slower low-bit option
    is never chosen over a faster, more precise one under a latency budget.

    Raises:
        ConfigError: no assignment meets the budget (the cheapest is named).
    """
    if kind not in ("avg_bits", "bytes", "latency_ms"):
        raise ConfigError(f"kind must be one of avg_bits, bytes, latency_ms. Got {kind!r} instead.")
    if isinstance(budget, bool) or not isinstance(budget, int | float) or not budget > 0 or budget == float("inf"):
        raise ConfigError(f"The 'budget' parameter must be a positive finite number. Got {budget!r} instead.")
    if not sensitivity:
        raise ConfigError("The 'sensitivity' parameter holds no layer: measure some with layer_sensitivity() first.")
    empty = [name for name, opts in sensitivity.items() if not opts]
    if empty:
        raise ConfigError(f"layer {empty[0]!r} has no measured option (were the candidates empty?)")
    params = sum(opts[0].params for opts in sensitivity.values())
    limit = budget * params / 8.0 if kind == "avg_bits" else budget
    ckind: Budget = "bytes" if kind == "avg_bits" else kind
    chosen = greedy_allocate(sensitivity, lambda o: _cost(o, ckind), limit)
    if chosen is None:
        cheapest = sum(min(_cost(o, ckind) for o in opts) for opts in sensitivity.values())
        shown = cheapest * 8.0 / params if kind == "avg_bits" else cheapest
        raise ConfigError(f"no format assignment meets {kind} <= {budget}: the cheapest reaches {shown:.4g}")
    nbytes = sum(o.nbytes for o in chosen.values())
    lat = [o.latency_ms for o in chosen.values()]
    return Plan(formats={n: o.fmt for n, o in chosen.items()}, total_error=sum(o.error for o in chosen.values()),
                total_bytes=nbytes, avg_bits=8.0 * nbytes / params,
                total_latency_ms=sum(v for v in lat if v is not None) if all(v is not None for v in lat) else None,
                per_layer=[{"module": n, "fmt": o.fmt, "error": o.error, "bits": o.bits, "latency_ms": o.latency_ms}
                           for n, o in chosen.items()])
