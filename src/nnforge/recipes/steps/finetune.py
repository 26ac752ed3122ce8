"""Step ``finetune``: LoRA adapters + a classification head, trained with early stopping, then merged."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field

from nnforge.adapt import FinetuneConfig, LoraConfig, apply_lora_, finetune_classifier, merge_lora_
from nnforge.adapt.probe import fit_linear_probe
from nnforge.config import Config
from nnforge.errors import ConfigError, DataError, StepFailedError
from nnforge.hardware import EnergyMeter, energy_label
from nnforge.recipes.steps._base import EVAL_REPORTERS, STEPS, Preflight, RunContext, StepResult


class FinetuneStepConfig(Config):
    """Options of the ``finetune`` step: the LoRA adapters and the training run."""

    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: FinetuneConfig = Field(default_factory=FinetuneConfig)
    init_head: Literal["probe", "random"] = "probe"  # "probe": LP-FT, the head starts as a linear probe


@STEPS.register("finetune")
class Finetune:
    name: ClassVar[str] = "finetune"
    Config: ClassVar[type[Config]] = FinetuneStepConfig
    description: ClassVar[str] = "LoRA fine-tuning (PEFT) with AdamW and early stopping; adapters merged after"

    def preflight(self, plan: Preflight, config: Any) -> None:
        """The model is a text classifier whose Linear modules include every LoRA target and layer named."""
        if not hasattr(plan.model, "tokenize"):
            raise ConfigError("the finetune step needs a text classifier (e.g. model: {name: minilm}); this "
                              f"recipe's model is a {type(plan.model).__name__} ({plan.task or 'unknown task'})")
        if "train" not in plan.splits:
            raise DataError("the finetune step needs a train split; the data has " + str(sorted(plan.splits)))
        check_lora_fits(plan.model, config.lora)

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        if not hasattr(ctx.model, "tokenize"):
            raise StepFailedError("the finetune step needs a text classifier (e.g. model: {name: minilm})")
        train, val = ctx.data["train"], ctx.data.get("val")
        probe_C = None
        if config.init_head == "probe":
            balanced = config.train.class_weights == "balanced"
            probe = ctx.shared.get("linear_probe_balanced" if balanced else "linear_probe") or fit_linear_probe(
                ctx.model.embed(train.texts), train.labels, ctx.model.embed(val.texts) if val else None,
                val.labels if val else None, num_classes=ctx.model.num_classes,
                class_weight="balanced" if balanced else None)
            with torch.no_grad():
                ctx.model.head.weight.copy_(probe.weight)
                ctx.model.head.bias.copy_(probe.bias)
            probe_C = probe.C
        lora_report = apply_lora_(ctx.model, config.lora, None)
        train_cfg = config.train if config.train.seed == ctx.seed else config.train.replace(seed=ctx.seed)
        reporters = list(ctx.shared.get(EVAL_REPORTERS, ()))  # a search trial's pruner, fed each epoch's accuracy

        def on_eval(step: int, metrics: dict[str, float]) -> bool:
            return any([report(step, metrics) for report in reporters])  # every reporter hears every epoch

        with EnergyMeter() as meter:  # RAPL counters where readable, else the labelled CPU-time estimate
            result = finetune_classifier(ctx.model, train.texts, train.labels, val.texts if val else [],
                                         val.labels if val else [], train_cfg, progress=ctx.progress,
                                         frozen_layers=min(config.lora.layers) if config.lora.layers else 0,
                                         on_eval=on_eval if reporters else None)
        energy = {**meter.reading.to_dict(), "label": energy_label(meter.reading)}
        merged = merge_lora_(ctx.model)
        ctx.save_model("fp32", ctx.model, {**ctx.model_spec, "transforms": []})
        ctx.sections["finetune"] = {**result.to_dict(), "energy": energy}
        return StepResult(
            metrics={"finetune_best_val_acc": result.best_val_acc, "finetune_best_epoch": result.best_epoch,
                     "finetune_seconds": result.seconds, "finetune_steps": result.steps,
                     "finetune_wise_alpha": result.wise_alpha, "finetune_energy_j": energy["joules"],
                     "val_accuracy": result.final_val_acc},
            details={"history": result.history, "lora_modules": len(lora_report.changed), "merged": merged,
                     "init_head": config.init_head, "probe_C": probe_C, "energy": energy},
        )


def _layer_index(name: str) -> int | None:
    return next((int(part) for part in name.split(".") if part.isdigit()), None)


def check_lora_fits(model: torch.nn.Module, lora: LoraConfig) -> None:
    """Every ``lora.target_modules`` name, ``lora.layers`` index and ``lora.trainable`` submodule exists in
    ``model`` (as :func:`~nnforge.adapt.apply_lora_` will look them up), checked without changing it.

    Raises:
        ConfigError: naming the option, what it named and what the model has.
    """
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    suffixes = sorted({n.rsplit(".", 1)[-1] for n in linears})
    unknown = [t for t in lora.target_modules if t not in suffixes]
    if unknown:
        raise ConfigError(f"lora.target_modules {unknown} name no Linear module of the model; its Linear module "
                          f"names: {suffixes}")
    if lora.layers is not None:
        targets = [n for n in linears if n.rsplit(".", 1)[-1] in lora.target_modules]
        have = sorted({i for n in targets if (i := _layer_index(n)) is not None})
        bad = sorted(set(lora.layers) - set(have))
        if bad or not lora.layers:
            span = f"{have[0]}..{have[-1]}" if have else "none"
            raise ConfigError(f"lora.layers {bad or list(lora.layers)} are not layer indices of the model's "
                              f"{list(lora.target_modules)} modules (layers: {span})")
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in lora.trainable if not any(n == t or n.startswith(t + ".") for n in names)]
    if missing:
        raise ConfigError(f"lora.trainable {missing} are not submodules of the model")
