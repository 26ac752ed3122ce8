"""Step ``upcycle``: turn the current dense model's FFNs into MoE layers (:func:`nnforge.moe.upcycle_`), so that the
training steps after it continue from the dense checkpoint as a mixture of experts.

The upcycled model is saved as its own variant (``upcycled``) with the upcycling in its spec, and it becomes the
current model: a following ``train`` step trains it (with its routing watched, its balancing losses added, and
the routing drift from the upcycled start reported) and saves it as ``fp32`` with the same spec, so every saved
variant rebuilds. A ``moe.upcycled`` ledger event records what changed.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

from pydantic import Field

from nnforge.config import Config
from nnforge.errors import ConfigError
from nnforge.moe import MoE, UpcycleConfig, apply_upcycle
from nnforge.recipes.steps._base import STEPS, Preflight, RunContext, StepResult


class UpcycleStepConfig(UpcycleConfig):
    """:class:`~nnforge.moe.UpcycleConfig` (experts, router, balancing, init, noise, target) and the variant name."""

    variant: str = Field("upcycled", min_length=1, description="the saved variant's name")

    def upcycle_config(self) -> UpcycleConfig:
        return UpcycleConfig.model_validate(self.model_dump(exclude={"variant"}))


@STEPS.register("upcycle")
class Upcycle:
    name: ClassVar[str] = "upcycle"
    Config: ClassVar[type[Config]] = UpcycleStepConfig
    description: ClassVar[str] = "turn a trained dense model's FFNs into mixture-of-experts layers (sparse upcycling)"

    def preflight(self, plan: Preflight, config: Any) -> None:
        """The model has dense FFNs called ``target`` and no MoE layer yet."""
        if any(isinstance(m, MoE) for m in plan.model.modules()):
            raise ConfigError("upcycle: the model already has MoE layers; upcycle a dense model (e.g. char-gpt)")
        if not any(n.split(".")[-1] == config.target for n, _ in plan.model.named_modules()):
            raise ConfigError(f"upcycle: the model has no module named {config.target!r} (set target to the dense "
                              "FFNs' attribute name)")

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        if "fp32" not in ctx.variants:  # nothing trained before: the dense model as built is the start
            ctx.save_model("fp32", ctx.model, {**ctx.model_spec, "transforms": list(ctx.model_spec.get("transforms", []))})
        model = copy.deepcopy(ctx.variants["fp32"])
        ucfg = config.upcycle_config()
        report = apply_upcycle(model, ucfg)
        spec = {**ctx.model_spec, "transforms": [*ctx.model_spec.get("transforms", []), report.config]}
        ctx.model_spec = spec  # later training steps save the upcycled architecture with this spec
        ctx.save_model(config.variant, model, spec)
        ctx.model = model
        params = sum(p.numel() for p in model.parameters())
        doc = {"variant": config.variant, "layers": [c.name for c in report.changed], "init": ucfg.init,
               "noise": ucfg.noise, "experts": ucfg.moe.num_experts, "router": ucfg.moe.router,
               "balance": ucfg.moe.balance, "params": params, "skipped": [list(s) for s in report.skipped]}
        ctx.ledger.append("moe.upcycled", doc, run=ctx.run_id)
        ctx.sections[self.name] = doc
        return StepResult(metrics={"upcycled_layers": len(report.changed), "upcycled_params": params},
                          details=doc)
