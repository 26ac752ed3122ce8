"""Removing whole experts by usage: ``prune_(model, ExpertPruneConfig(...), calibration=batches)``.

The calibration batches are routed through the model (evaluation mode, no gradients) and every MoE layer's
experts are ranked by the share of the assignments they received; the least used go, physically (their FFNs and
their rows of the router: :meth:`~nnforge.moe.MoE.keep_experts_`). Either a fraction of experts is kept per layer
(``keep``, 0.75 by default, never fewer than the router's ``k``), or, when ``min_load`` is given, every expert
whose load is under ``min_load`` times the even share ``1/E`` is removed. The report's config records the experts kept in each layer (``kept``), so a saved
variant is rebuilt with the same experts, and a config with ``kept`` prunes without data.

Tokens that went to a removed expert go to their next choice: with top-k routing renormalised over the kept
experts, an expert that received nothing changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from pydantic import Field, model_validator
from torch import nn

from nnforge.compress import ModuleChange, ModuleFilter, TransformReport, register_transform
from nnforge.config import Config, config_type
from nnforge.errors import ConfigError
from nnforge.moe._layer import MoE
from nnforge.moe._report import collect_routing

__all__ = ["ExpertPruneConfig", "prune_experts"]


@config_type("experts")
class ExpertPruneConfig(Config):
    """Which experts to remove: the least used, by ``keep`` fraction or ``min_load`` (module docstring)."""

    keep: float | None = Field(None, gt=0.0, le=1.0, description="fraction of each layer's experts to keep "
                                                                 "(default 0.75 unless min_load is given)")
    min_load: float | None = Field(None, ge=0.0, description="instead of keep: remove experts whose load share "
                                                             "is under min_load / E (0: only those that got nothing)")
    kept: dict[str, list[int]] = Field(default_factory=dict, description="resolved: the experts kept per layer")

    @model_validator(mode="after")
    def _one_rule(self) -> ExpertPruneConfig:
        if self.min_load is not None and self.keep is not None:
            raise ValueError("give one of keep (a fraction of experts) or min_load (relative to the even share), "
                             "not both")
        return self


def _needs_data(config: ExpertPruneConfig) -> bool:
    return not config.kept


def _usage(model: nn.Module, batches: Iterable[Any], forward: Callable[[nn.Module, Any], Any] | None
           ) -> dict[str, torch.Tensor]:
    """Per MoE layer: assignments each expert received over ``batches``."""
    from nnforge.compress.quantize.calibrate.stats import run_batch

    run = forward or run_batch  # the calibration forward every pruning and quantization method uses
    was_training = model.training
    model.eval()
    counts: dict[str, torch.Tensor] = {}
    try:
        with torch.no_grad(), collect_routing(model) as collector:
            for batch in batches:
                run(model, batch)
        for layer, reports in collector.by_layer().items():
            counts[layer] = sum((torch.tensor(r.load, dtype=torch.float64) * r.tokens for r in reports),
                                torch.zeros(reports[0].num_experts, dtype=torch.float64))
    finally:
        model.train(was_training)
    return counts


def _choose(layer: MoE, usage: torch.Tensor, config: ExpertPruneConfig) -> list[int]:
    e = layer.config.num_experts
    k = int(getattr(getattr(layer.router, "options", None), "k", 1) or 1)
    share = usage / usage.sum().clamp_min(1e-12)
    order = torch.argsort(share, descending=True, stable=True).tolist()
    if config.min_load is None:
        n = max(k, min(e, math.ceil((config.keep or 0.75) * e - 1e-9)))
    else:
        n = max(k, sum(1 for x in share.tolist() if x >= config.min_load / e and x > 0.0))
    return sorted(order[:n])


@register_transform(ExpertPruneConfig, kind="prune", needs_data=_needs_data)
def prune_experts(model: nn.Module, config: ExpertPruneConfig, filter: ModuleFilter | None = None, *,
                  calibration: Iterable[Any] | None = None, forward: Callable[[nn.Module, Any], Any] | None = None,
                  skeleton: bool = False, progress: Callable[[int, int], None] | None = None) -> TransformReport:
    """Remove the least-used experts of every MoE layer (``filter`` may leave layers out); see the module docstring.

    Raises:
        ConfigError: the model has no MoE layer, no calibration data was given for a usage rule, or ``kept`` names
            a layer the model does not have.
    """
    layers = {n: m for n, m in model.named_modules() if isinstance(m, MoE) and (filter is None or filter(n, m))}
    if not layers:
        raise ConfigError("prune experts: the model has no MoE layer (or the filter left none)")
    unknown = sorted(set(config.kept) - set(layers))
    if unknown:
        raise ConfigError(f"prune experts: kept names {unknown} that are not MoE layers here; layers: {sorted(layers)}")
    if config.kept:
        kept = {n: list(config.kept[n]) for n in layers if n in config.kept}
        usage: dict[str, torch.Tensor] = {}
    else:
        if skeleton:
            raise ConfigError("prune experts: rebuilding a saved variant needs its resolved config (with kept)")
        if calibration is None:
            raise ConfigError("prune experts by usage needs calibration data: prune_(model, config, "
                              "calibration=batches)")
        usage = _usage(model, calibration, forward)
        missing = sorted(set(layers) - set(usage))
        if missing:
            raise ConfigError(f"prune experts: the calibration batches never reached {missing}")
        kept = {n: _choose(layers[n], usage[n], config) for n in layers}
    report = TransformReport("experts", config.replace(kept=kept).to_dict())
    for i, (name, keep) in enumerate(kept.items()):
        _remove(report, name, layers[name], keep, usage.get(name))
        if progress:
            progress(i + 1, len(kept))
    done = {f"{name}.{sub}" if sub else name for name in kept for sub, _ in layers[name].named_modules()}
    for name, module in model.named_modules():
        if name and name not in done and any(True for _ in module.parameters(recurse=False)):
            report.skipped.append((name, "not in an MoE layer this removal covers: expert removal leaves it as is"))
    return report


def _remove(report: TransformReport, name: str, layer: MoE, keep: list[int], usage: torch.Tensor | None) -> None:
    """Keep ``keep`` in ``layer``; every parameter-holding submodule is reported (removed, cut, or kept)."""
    e = layer.config.num_experts
    share = (usage / usage.sum().clamp_min(1e-12)).tolist() if usage is not None else None
    what = f"experts {e} → {len(keep)}"

    def used(j: int) -> str:
        return f", {share[j]:.1%} of the calibration assignments" if share is not None else ""

    routers = [(f"{name}.router.{n}" if n else f"{name}.router", m, _bytes_own(m))
               for n, m in layer.router.named_modules() if any(True for _ in m.parameters(recurse=False))]
    experts = {j: [(f"{name}.experts.{j}.{n}", _bytes_own(m)) for n, m in layer.experts[j].named_modules()
                   if any(True for _ in m.parameters(recurse=False))] for j in range(e)}
    shared = [f"{name}.shared.{n}" for n, m in (layer.shared.named_modules() if layer.shared is not None else [])
              if n and any(True for _ in m.parameters(recurse=False))]
    layer.keep_experts_(keep)
    for full, module, before in routers:
        report.changed.append(ModuleChange(full, type(module).__name__, before, _bytes_own(module), 0.0,
                                           f"{what}: the rows of the removed experts removed"))
    for j, mods in experts.items():
        for full, before in mods:
            if j in keep:
                report.skipped.append((full, f"expert {j} kept ({what}{used(j)})"))
            else:
                report.changed.append(ModuleChange(full, "Linear", before, 0, 1.0,
                                                   f"expert {j} removed whole ({what}{used(j)})"))
    for full in shared:
        report.skipped.append((full, "a shared expert: every token uses it, it is never removed"))


def _bytes_own(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*module.parameters(recurse=False),
                                                      *module.buffers(recurse=False)])
