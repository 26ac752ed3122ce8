"""Step ``quantize``: a copy of the current model, quantized, saved as its own variant."""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal

from nnforge.compress import Int8WeightOnlyConfig, quantize_
from nnforge.config import Config
from nnforge.recipes.steps._base import STEPS, RunContext, StepResult


class QuantizeStepConfig(Config):
    """Options of the ``quantize`` step."""

    scheme: Literal["int8"] = "int8"
    embeddings: bool = True
    variant: str = "int8"


@STEPS.register("quantize")
class Quantize:
    name: ClassVar[str] = "quantize"
    Config: ClassVar[type[Config]] = QuantizeStepConfig
    description: ClassVar[str] = "int8 weight-only quantization (Linear and Embedding, per-channel scales)"

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        base = ctx.variants.get("fp32", ctx.model)
        if "fp32" not in ctx.variants:  # no fine-tuning before: the base model is the fp32 reference
            ctx.save_model("fp32", base, {**ctx.model_spec, "transforms": []})
        model = copy.deepcopy(base)
        qcfg = Int8WeightOnlyConfig(modules=("linear", "embedding") if config.embeddings else ("linear",))
        report = quantize_(model, qcfg)
        if ctx.progress:
            ctx.progress("quantize", 1, 1)
        spec = {**ctx.variant_specs["fp32"], "transforms": [*ctx.variant_specs["fp32"].get("transforms", []),
                                                            qcfg.to_dict()]}
        ctx.save_model(config.variant, model, spec)
        ctx.model = model
        ctx.sections.setdefault("quantize", {})[config.variant] = report.to_dict()
        errors = [c.error for c in report.changed]
        return StepResult(
            metrics={f"{config.variant}_modules_quantized": len(report.changed),
                     f"{config.variant}_modules_skipped": len(report.skipped),
                     f"{config.variant}_max_weight_rel_error": max(errors) if errors else 0.0},
            details={"skipped": report.skipped[:50]},
        )
