"""What the training steps do for a model with MoE layers: watch the routing while it trains (alarms become
``moe.alarm`` events), freeze the routers when asked, and afterwards measure which experts serve each document
group of the corpus (comedy, tragedy, history, poems for shakespeare-char) and, when the model had been trained
before this step (fine-tuning), how far its routing drifted (``moe.drift`` event)."""

from __future__ import annotations

import copy
from typing import Any

import torch

from nnforge.data import CharCorpus
from nnforge.errors import ConfigError
from nnforge.recipes.steps._base import RunContext

__all__ = ["MoETraining", "has_moe"]


def has_moe(model: Any) -> bool:
    from nnforge.moe import MoE

    return any(isinstance(m, MoE) for m in model.modules())


def _lm_forward(model: Any, batch: Any) -> Any:
    return model(batch[0])


class MoETraining:
    """Set up before ``fit`` (monitor, router freezing, a copy for the drift) and summarise after it."""

    def __init__(self, ctx: RunContext, config: Any, step: str) -> None:
        from nnforge.moe import freeze_routers_
        from nnforge.moe.diagnostics import RoutingMonitor

        self.ctx, self.config, self.step = ctx, config, step
        if config.freeze_router:
            if not has_moe(ctx.model):
                raise ConfigError(f"the {step} step's freeze_router needs a model with MoE layers; this one has none")
            freeze_routers_(ctx.model)

        def record(alarm: Any) -> None:
            ctx.ledger.append("moe.alarm", alarm.to_dict(), run=ctx.run_id)

        every = config.routing_every or max(1, config.train.max_steps // 50)
        self.monitor = RoutingMonitor(ctx.model, every=every, on_alarm=record)
        # fine-tuning: the model was trained by an earlier step, or came with weights
        trained = bool(ctx.variants) or bool(ctx.model_spec.get("base", {}).get("safetensors"))
        self.before = copy.deepcopy(ctx.model).eval() if trained else None

    def finish(self, dataset: Any, eval_data: list[Any], batch_size: int, block: int) -> dict[str, Any]:
        """The ``moe`` section (kept across steps: the previous step's genre routing becomes ``by_group_before``)
        and the step's metrics."""
        from nnforge.moe.diagnostics import routing_by_slice, routing_drift

        ctx, monitor = self.ctx, self.monitor
        section: dict[str, Any] = {"history": monitor.history, "alarms": [a.to_dict() for a in monitor.alarms],
                                   "step": self.step, "router_frozen": bool(self.config.freeze_router),
                                   "trained_on": self.config.groups}
        previous = ctx.sections.get("moe") or {}
        if isinstance(dataset, CharCorpus) and dataset.groups:
            gen = torch.Generator().manual_seed(ctx.seed + 17)
            slices = {g: dataset.group_batches(g, self.config.routing_batches, batch_size, block, gen)
                      for g in dataset.groups}
            section["by_group"] = routing_by_slice(ctx.model, slices, forward=_lm_forward).to_dict()
            if previous.get("by_group"):
                section["by_group_before"] = previous["by_group"]
        metrics: dict[str, Any] = {}
        if self.before is not None and eval_data:
            drift = routing_drift(self.before, ctx.model, eval_data[: self.config.routing_batches],
                                  forward=_lm_forward)
            section["drift"] = [d.to_dict() for d in drift]
            ctx.ledger.append("moe.drift", {"step": self.step, "layers": [
                {"layer": d.layer, "top1_agreement": d.top1_agreement, "topk_overlap": d.topk_overlap,
                 "load_shift": d.load_shift} for d in drift]}, run=ctx.run_id)
            metrics["moe_min_top1_agreement"] = min(d.top1_agreement for d in drift)
            metrics["moe_max_load_shift"] = max(d.load_shift for d in drift)
        ctx.sections["moe"] = section
        last = monitor.last()
        metrics.update({"moe_max_imbalance": max((r["imbalance"] for r in last.values()), default=float("nan")),
                        "moe_dead_experts": sum(len(r["dead"]) for r in last.values()),
                        "moe_alarms": len(monitor.alarms)})
        return metrics
