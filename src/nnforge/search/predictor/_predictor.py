"""A latency predictor: a linear model of batch-1 latency over architecture features, fitted on measurements.

Latency at batch 1 on a CPU is close to ``a + b·FLOPs + c·module calls + …``: a fixed cost per call (Python,
dispatch) plus arithmetic. The fit minimises the *relative* squared error (each row divided by its measured
latency), the error the predictor is judged by, with a small ridge on standardised features so that correlated
features (depth and module calls) do not blow up. Its quality is :meth:`LatencyPredictor.median_relative_error`
on architectures it was not fitted on.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nnforge.errors import ConfigError

__all__ = ["LatencyPredictor", "fit_latency_predictor"]


@dataclass(frozen=True)
class LatencyPredictor:
    """Predicted batch-1 latency (ms) = intercept + Σ coef_i · (feature_i − mean_i) / scale_i."""

    names: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    fitted_on: int

    def _row(self, features: Mapping[str, float]) -> np.ndarray:
        missing = [n for n in self.names if n not in features]
        if missing:
            raise ConfigError(f"the latency predictor needs the features {', '.join(missing)}; got "
                              f"{', '.join(sorted(features)) or 'none'}")
        x = np.array([float(features[n]) for n in self.names])
        return (x - np.array(self.mean)) / np.array(self.scale)

    def predict(self, features: Mapping[str, float]) -> float:
        """Predicted latency in ms (kept above 0: a linear model can go negative far outside its data)."""
        return max(float(self.intercept + self._row(features) @ np.array(self.coef)), 1e-6)

    def median_relative_error(self, features: Sequence[Mapping[str, float]], latencies_ms: Sequence[float]) -> float:
        """Median of |predicted − measured| / measured over the given architectures (a fraction)."""
        if len(features) != len(latencies_ms) or not features:
            raise ConfigError(f"median_relative_error needs one measured latency per architecture (at least one); "
                              f"got {len(features)} architectures and {len(latencies_ms)} latencies")
        errors = [abs(self.predict(f) - y) / y for f, y in zip(features, latencies_ms, strict=True)]
        return float(np.median(errors))

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "mean": list(self.mean), "scale": list(self.scale),
                "coef": list(self.coef), "intercept": self.intercept, "fitted_on": self.fitted_on}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> LatencyPredictor:
        return cls(names=tuple(doc["names"]), mean=tuple(doc["mean"]), scale=tuple(doc["scale"]),
                   coef=tuple(doc["coef"]), intercept=float(doc["intercept"]), fitted_on=int(doc["fitted_on"]))


def fit_latency_predictor(features: Sequence[Mapping[str, float]], latencies_ms: Sequence[float], *,
                          names: Sequence[str] | None = None, ridge: float = 1e-3) -> LatencyPredictor:
    """Fit a :class:`LatencyPredictor` on measured (architecture features → batch-1 latency) pairs.

    Args:
        features: one feature dict per measured architecture (e.g. :func:`architecture_features`).
        latencies_ms: the measured latencies, > 0.
        names: the features to use (default: those every architecture has).
        ridge: L2 penalty on the standardised coefficients, relative to the number of rows.

    Raises:
        ConfigError: fewer than 2 pairs, mismatched lengths, or a latency that is not a positive number.
    """
    if len(features) != len(latencies_ms) or len(features) < 2:
        raise ConfigError(f"fitting a latency predictor needs at least 2 measured architectures, one latency each; "
                          f"got {len(features)} architectures and {len(latencies_ms)} latencies")
    y = np.array([float(v) for v in latencies_ms])
    if not all(math.isfinite(v) and v > 0 for v in y):
        raise ConfigError(f"measured latencies must be positive numbers of ms; got {sorted(y.tolist())[:3]}…")
    keys = tuple(names) if names is not None else tuple(sorted(set.intersection(*(set(f) for f in features))))
    x = np.array([[float(f[k]) for k in keys] for f in features]).reshape(len(features), len(keys))
    mean, scale = x.mean(axis=0), x.std(axis=0)
    scale[scale == 0] = 1.0  # a constant feature: the intercept carries it
    z = (x - mean) / scale
    design = np.hstack([np.ones((len(y), 1)), z]) / y[:, None]  # rows scaled by 1/y: relative error
    target = np.ones(len(y))
    penalty = np.diag([0.0] + [ridge * len(y)] * len(keys))  # the intercept is not penalised
    solution = np.linalg.solve(design.T @ design + penalty, design.T @ target)
    return LatencyPredictor(names=keys, mean=tuple(mean.tolist()), scale=tuple(scale.tolist()),
                            coef=tuple(solution[1:].tolist()), intercept=float(solution[0]), fitted_on=len(y))
