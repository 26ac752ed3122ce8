"""A compression plan as a search space, and a plan applied: ``quantize_`` with per-module formats, one call per
group size the plan uses."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from nnforge.compress import quantize_
from nnforge.errors import ConfigError
from nnforge.search._space import Param
from nnforge.search.plan.config import PLAN_PREFIX, PlanSearchConfig, parse_choice

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


def _by_group(plan: Mapping[str, str], config: PlanSearchConfig,
              kinds: Mapping[str, str]) -> dict[tuple[int | None, int | None], dict[str, str]]:
    """The plan split by (Linear group size, Embedding group size): one ``quantize_`` call each."""
    q = config.quantize
    calls: dict[tuple[int | None, int | None], dict[str, str]] = {}
    for name, choice in plan.items():
        fmt, group = parse_choice(choice)
        key: tuple[int | None, int | None]
        if kinds.get(name) == "embedding":
            key = (q.group_size, q.embedding_group_size if group == "default" else group)
        else:
            key = (q.group_size if group == "default" else group, q.embedding_group_size)
        calls.setdefault(key, {})[name] = fmt
    return calls


def apply_plan(model: nn.Module, plan: Mapping[str, str], config: PlanSearchConfig, *,
               calibration: Iterable[Any] | None = None,
               forward: Callable[[nn.Module, Any], Any] | None = None) -> nn.Module:
    """A quantized copy of ``model`` (the original is untouched): ``config.quantize`` with ``plan``'s choices,
    modules outside the plan left in floating point.

    A plan with one group size is one ``quantize_`` call; with several, one call per group size, in a fixed
    order (calibration statistics of a later call then see the layers an earlier call quantized, as
    layer-by-layer GPTQ does).
    """
    kinds = plan_modules(model, config.model_copy(update={"modules": None}))
    unknown = sorted(set(plan) - set(kinds))
    if unknown:
        raise ConfigError(f"the plan names {unknown}, which are not Linear/Embedding modules of this model")
    quantized = copy.deepcopy(model)
    calib = list(calibration) if calibration is not None else None
    for (group, emb_group), formats in sorted(_by_group(plan, config, kinds).items(), key=lambda kv: str(kv[0])):
        cfg = type(config.quantize)(**{**config.quantize.model_dump(), "plan": formats, "group_size": group,
                                      "embedding_group_size": emb_group})
        names = set(formats)
        quantize_(quantized, cfg, lambda name, _, names=names: name in names,  # type: ignore[misc]
                  calibration=calib, forward=forward)
    return quantized
