"""Sparse upcycling (Komatsuzaki et al. 2023): a trained dense FFN becomes an MoE layer, so a dense checkpoint is
where MoE training starts.

``upcycle_(model, UpcycleConfig(...))`` replaces, in place, every module named ``target`` (the char-GPT's ``mlp``)
whose input and output projections are the Linears ``fc_in`` and ``fc_out`` with an :class:`~nnforge.moe.MoE`:

* ``init="copy"`` — every expert a copy of the dense FFN (plus Gaussian ``noise`` relative to each weight's std,
  to break the symmetry): with a top-k router whose weights sum to 1, the layer computes exactly what the dense
  one did until training moves it (tested);
* ``init="partition"`` — the dense hidden units dealt out to the experts (expert ``e`` gets units
  ``e, e+E, …``), each expert ``hidden / E`` wide, its output projection scaled by ``E``: with the router's
  weights summing to 1 and uniform at the start, the expected output over which ``k`` experts are chosen is
  the dense output.

The router starts at zero (every expert scores alike), so routing is learnt from the dense model's function.
Modules that do not match are listed in the report with the reason, never silently skipped.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from nnforge.compress import ModuleChange, ModuleFilter, TransformReport, register_transform
from nnforge.config import Config, config_type
from nnforge.errors import ConfigError
from nnforge.moe._layer import MoE, MoEConfig

__all__ = ["UpcycleConfig", "UpcycleReport", "upcycle_", "apply_upcycle"]


@config_type("moe.upcycle")
class UpcycleConfig(Config):
    """What to upcycle and how (see the module docstring)."""

    moe: MoEConfig = Field(default_factory=MoEConfig, description="the new layers; hidden is set from the dense FFN")
    init: Literal["copy", "partition"] = "copy"
    noise: float = Field(0.0, ge=0.0, description="copy: Gaussian noise, as a fraction of each weight's std")
    target: str = Field("mlp", description="the dense FFN modules' attribute name")
    fc_in: str = Field("c_fc", description="the FFN's input projection (Linear d → h)")
    fc_out: str = Field("c_proj", description="the FFN's output projection (Linear h → d)")
    activation: Literal["gelu", "relu", "silu"] = Field("gelu", description="the dense FFN's activation")
    seed: int = 0


class UpcycleReport(dict[str, Any]):
    """``{"changed": [module paths], "skipped": [{"module", "reason"}], "params_before", "params_after"}``."""


def upcycle_(model: nn.Module, config: UpcycleConfig, filter: ModuleFilter | None = None) -> UpcycleReport:
    """Replace each dense FFN ``target`` of ``model`` by an MoE initialised from it (in place); ``filter(name,
    module) -> bool`` may leave some out (they are listed as skipped).

    Raises:
        ConfigError: no module called ``config.target`` was found, or none could be upcycled.
    """
    gen = torch.Generator().manual_seed(config.seed)
    before = sum(p.numel() for p in model.parameters())
    changed: list[str] = []
    skipped: list[dict[str, str]] = []
    found = [(n, m) for n, m in model.named_modules() if n.split(".")[-1] == config.target]
    if not found:
        raise ConfigError(f"upcycle_: no module named {config.target!r} in the model (set UpcycleConfig.target to "
                          "the dense FFNs' attribute name)")
    for name, module in found:
        if filter is not None and not filter(name, module):
            skipped.append({"module": name, "reason": "left out by the filter"})
            continue
        fc_in, fc_out = getattr(module, config.fc_in, None), getattr(module, config.fc_out, None)
        if isinstance(module, MoE):
            skipped.append({"module": name, "reason": "already an MoE layer"})
            continue
        if not (isinstance(fc_in, nn.Linear) and isinstance(fc_out, nn.Linear)
                and fc_out.in_features == fc_in.out_features and fc_out.out_features == fc_in.in_features):
            skipped.append({"module": name, "reason": f"needs Linears {config.fc_in!r} (d → h) and "
                                                      f"{config.fc_out!r} (h → d)"})
            continue
        moe = _from_dense(fc_in, fc_out, config, gen)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, moe)
        changed.append(name)
    if not changed:
        raise ConfigError(f"upcycle_: none of the {len(found)} {config.target!r} modules could be upcycled: "
                          + "; ".join(f"{s['module']}: {s['reason']}" for s in skipped))
    after = sum(p.numel() for p in model.parameters())
    return UpcycleReport(changed=changed, skipped=skipped, params_before=before, params_after=after)


@torch.no_grad()
def _from_dense(fc_in: nn.Linear, fc_out: nn.Linear, config: UpcycleConfig, gen: torch.Generator) -> MoE:
    d, h = fc_in.in_features, fc_in.out_features
    e = config.moe.num_experts
    bias = fc_in.bias is not None
    if config.init == "partition":
        if h % e:
            raise ConfigError(f"upcycle_: init 'partition' deals the {h} hidden units to {e} experts; {h} is not a "
                              "multiple of it")
        width = h // e
    else:
        width = h
    moe_cfg = config.moe.model_copy(update={"hidden": width, "bias": bias, "activation": config.activation})
    moe = MoE(d, moe_cfg).to(fc_in.weight.dtype)
    for i, expert in enumerate(moe.experts.members()):
        rows = torch.arange(i, h, e) if config.init == "partition" else torch.arange(h)
        scale = float(e) if config.init == "partition" else 1.0
        w1, w2 = fc_in.weight[rows], fc_out.weight[:, rows] * scale
        if config.noise and config.init == "copy":
            w1 = w1 + torch.randn(w1.shape, generator=gen) * w1.std() * config.noise
            w2 = w2 + torch.randn(w2.shape, generator=gen) * w2.std() * config.noise
        expert.c_fc.weight.copy_(w1)
        expert.c_proj.weight.copy_(w2)
        if bias and fc_in.bias is not None and fc_out.bias is not None:
            expert.c_fc.bias.copy_(fc_in.bias[rows])
            expert.c_proj.bias.copy_(fc_out.bias)  # the combine weights sum to 1: the bias once
    moe.router.gate.weight.zero_()
    return moe.to(fc_in.weight.device)


@register_transform(UpcycleConfig, kind="upcycle")
def apply_upcycle(model: nn.Module, config: UpcycleConfig, filter: ModuleFilter | None = None, *,
                  skeleton: bool = False, progress: Any = None) -> TransformReport:
    """:func:`upcycle_` as a registered transform (``apply_(model, UpcycleConfig(...))``), so that a saved upcycled
    variant is rebuilt from its dense base and this config (``skeleton``: the weights load next)."""
    sizes = {n: sum(p.numel() * p.element_size() for p in m.parameters())
             for n, m in model.named_modules() if n.split(".")[-1] == config.target}
    done = upcycle_(model, config, filter)
    report = TransformReport("upcycle", config.to_dict())
    for name in done["changed"]:
        layer = model.get_submodule(name)
        after = sum(p.numel() * p.element_size() for p in layer.parameters())
        report.changed.append(ModuleChange(name, "MoE", sizes[name], after, 0.0,
                                           f"dense FFN → {config.moe.num_experts} experts ({config.init})"))
    report.skipped.extend((s["module"], s["reason"]) for s in done["skipped"])
    return report
