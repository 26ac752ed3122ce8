"""Explore: new hyperparameters near a copied member's (×0.8 / ×1.2 or resampled), kept inside the space."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Mapping
from typing import Any

from nnforge.search._space import Param, is_active, order

__all__ = ["explore", "perturb_value"]

Sampler = Callable[[Mapping[str, Param]], dict[str, Any]]  # one fresh draw of a space


def _clip(param: Param, value: float) -> float:
    return min(max(value, float(param.low or 0.0)), float(param.high or 0.0))


def _on_grid(param: Param, value: float) -> float:
    if param.step is None:
        return value
    low = float(param.low or 0.0)
    return _clip(param, low + round((value - low) / param.step) * param.step)


def perturb_value(param: Param, value: Any, factor: float) -> Any:
    """``value × factor`` inside ``[low, high]`` (on the ``step`` grid); an int moves by at least 1 in the factor's
    direction so that a small int still changes; a categorical value is returned as it is."""
    if param.kind == "categorical" or factor == 1:
        return value
    if param.kind == "int":
        step = int(param.step or 1)
        moved = round(value * factor / step) * step
        if moved == value:
            moved = value + (step if factor > 1 else -step)
        return int(_clip(param, moved))
    new = _on_grid(param, _clip(param, float(value) * factor))
    return new if math.isfinite(new) else value


def explore(space: Mapping[str, Param], params: Mapping[str, Any], *, rng: random.Random, factors: list[float],
            resample_probability: float, fresh: Sampler) -> dict[str, Any]:
    """New hyperparameters from ``params``: each active one resampled with ``resample_probability`` (a ``fresh``
    draw of that parameter alone), else perturbed by a factor drawn from ``factors``. A parameter that a changed
    parent switches on is drawn fresh; one switched off is dropped."""
    out: dict[str, Any] = {}
    for name in order(space):
        param = space[name]
        if not is_active(param, out):
            continue
        if name not in params or rng.random() < resample_probability:
            out[name] = fresh({name: param.model_copy(update={"when": {}})})[name]
        else:
            out[name] = perturb_value(param, params[name], rng.choice(factors))
    return out
