"""A compression plan as a search space, and a plan applied: one ``quantize_`` call with per-module formats."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from nnforge.compress import quantize_
from nnforge.errors import ConfigError
from nnforge.search._space import Param
from nnforge.search.plan.config import GROUP_SIZE_KEY, PLAN_PREFIX, PlanSearchConfig

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
    """One categorical parameter per module (``"plan:<name>"``), plus ``group_size`` when several are given."""
    space = {f"{PLAN_PREFIX}{name}": Param(kind="categorical", choices=list(
                 config.embedding_formats if kind == "embedding" else config.formats))
             for name, kind in plan_modules(model, config).items()}
    if len(config.group_sizes) > 1:
        space[GROUP_SIZE_KEY] = Param(kind="categorical", choices=list(config.group_sizes))
    return space


def plan_from_params(params: Mapping[str, Any], config: PlanSearchConfig) -> tuple[dict[str, str], int | None]:
    """(module -> format, Linear group size) from a trial's parameters."""
    plan = {k[len(PLAN_PREFIX):]: str(v) for k, v in params.items() if k.startswith(PLAN_PREFIX)}
    return plan, params.get(GROUP_SIZE_KEY, config.group_sizes[0])


def apply_plan(model: nn.Module, plan: Mapping[str, str], config: PlanSearchConfig, *, group_size: int | None = None,
               calibration: Iterable[Any] | None = None,
               forward: Callable[[nn.Module, Any], Any] | None = None) -> nn.Module:
    """A quantized copy of ``model`` (the original is untouched): ``config.quantize`` with ``plan``'s formats,
    modules outside the plan left in floating point."""
    planned = set(plan)
    quantized = copy.deepcopy(model)
    base = config.quantize.model_copy(update={"plan": dict(plan)})
    if group_size is not None or len(config.group_sizes) == 1:
        base = base.model_copy(update={"group_size": group_size if group_size is not None else config.group_sizes[0]})
    quantize_(quantized, type(base)(**base.model_dump()), lambda name, _: name in planned,
              calibration=calibration, forward=forward)
    return quantized
