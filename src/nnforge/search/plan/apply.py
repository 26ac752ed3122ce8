"""A compression plan as a search space, and a plan applied to a copy of the model."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from nnforge.errors import ConfigError
from nnforge.search._space import Param
from nnforge.search.plan.config import PLAN_PREFIX, PlanSearchConfig

__all__ = ["plan_modules", "plan_space", "plan_from_params", "apply_plan"]


def plan_modules(model: nn.Module, config: PlanSearchConfig) -> dict[str, str]:
    """The searched modules: name -> ``"linear"`` or ``"embedding"`` (tied and aliased modules once)."""
    kinds = {"linear": (nn.Linear,), "conv": (nn.Conv2d,), "embedding": (nn.Embedding,)}
    handled = {k: v for k, v in kinds.items() if k in config.quantize.modules}
    found: dict[str, str] = {}
    seen: set[int] = set()
    for name, mod in model.named_modules():
        kind = next((k for k, types in handled.items() if isinstance(mod, types)), None)
        if kind is None or id(mod) in seen or (kind == "embedding" and getattr(mod, "max_norm", None) is not None):
            continue
        seen.add(id(mod))
        found[name] = "embedding" if kind == "embedding" else "linear"
    if config.modules is not None:
        unknown = sorted(set(config.modules) - set(found))
        if unknown:
            raise ConfigError(f"PlanSearchConfig.modules names {unknown}, which are not Linear/Embedding modules the "
                              f"quantizer handles in this model (it has {len(found)}, e.g. {sorted(found)[:3]})")
        found = {n: found[n] for n in config.modules}
    if not found:
        raise ConfigError("the model has no Linear or Embedding module to plan formats for")
    return found


def plan_space(model: nn.Module, config: PlanSearchConfig) -> dict[str, Param]:
    """One categorical parameter per module: ``"plan:<name>"`` with the module's choices."""
    return {f"{PLAN_PREFIX}{name}": Param(kind="categorical", choices=list(
                config.embedding_formats if kind == "embedding" else config.formats))
            for name, kind in plan_modules(model, config).items()}


def plan_from_params(params: Mapping[str, Any]) -> dict[str, str]:
    """module -> choice (``"int4/g32"``, ``"fp32"``, …) from a trial's parameters."""
    return {k[len(PLAN_PREFIX):]: str(v) for k, v in params.items() if k.startswith(PLAN_PREFIX)}


def apply_plan(model: nn.Module, plan: Mapping[str, str], config: PlanSearchConfig, *,
               calibration: Iterable[Any] | None = None,
               forward: Callable[[nn.Module, Any], Any] | None = None) -> nn.Module:
    """A quantized copy of ``model`` (the original is untouched): ``config.quantize`` with ``plan``'s choices,
    modules outside the plan left in floating point. Every layer is quantized from the float model's
    calibration statistics, as one ``quantize_`` call with this plan would (also when the plan mixes group
    sizes, which one ``quantize_`` call cannot)."""
    from nnforge.search.plan.layers import PlanQuantizer

    return PlanQuantizer(model, config.model_copy(update={"modules": list(plan)}), calibration=calibration,
                         forward=forward).build(plan)
