"""Step ``federate``: train the recipe's model by federated learning (:func:`nnforge.federated.federate_`) — the
clients each hold one part of the recipe's data (split by the configured partitioner, seeded by the recipe's
seed) and train locally with nnforge's loop; a Flower strategy aggregates.

Every round is a ``federated.round`` ledger event (clients sampled and replied, each client's examples, loss,
seconds, error, update norm and anomaly score, bytes each way, the global evaluation, the privacy spent): the
record Art. 12 asks for. ``federated.started``
records the partition (units, examples and label counts per client) and the configuration; ``federated.finished``
the outcome. The trained model is saved as variant ``fp32`` (``variant`` renames it) for the steps after.

On a text classifier, ``lora`` puts PEFT adapters on the frozen base first (federated LoRA): only the adapters and
the head train and travel (``share: auto``), and they are merged into the weights before the model is saved.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from nnforge.adapt import LoraConfig, apply_lora_, merge_lora_
from nnforge.config import Config
from nnforge.data import ArrayClassification, CharCorpus, TextClassification
from nnforge.errors import ConfigError
from nnforge.federated import FederatedConfig, RoundRecord, check_federation, federate_
from nnforge.federated.deployment import JobSpec
from nnforge.recipes.steps._base import STEPS, Preflight, RunContext, StepResult


class FederateStepConfig(FederatedConfig):
    """:class:`~nnforge.federated.FederatedConfig` (its ``seed`` is the recipe's) and the saved variant's name."""

    variant: str = Field("fp32", min_length=1, description="the federated model's variant name")
    lora: LoraConfig | None = Field(None, description="federated LoRA: adapters on the frozen base (a text "
                                                      "classifier); only they and the head travel")

    def federated_config(self, seed: int) -> FederatedConfig:
        return FederatedConfig.model_validate({**self.model_dump(exclude={"variant", "lora"}), "seed": seed})


def federated_data(data: dict[str, Any], label_names: list[str] | None = None) -> Any:
    """What the clients split: an array dataset or corpus as loaded, or a text dataset's train and test splits
    (as the recipe sized them) put back together."""
    if "dataset" in data:
        return data["dataset"]
    if "train" in data and "test" in data:
        return TextClassification(name="recipe", label_names=list(label_names or []),
                                  splits={"train": data["train"], "test": data["test"]})
    return None


def _round_event(record: RoundRecord) -> dict[str, Any]:
    return {"round": record.round, "sampled": record.sampled, "replied": record.replied,
            "bytes_down": record.bytes_down, "bytes_up": record.bytes_up, "seconds": round(record.seconds, 4),
            "train_loss": record.train_loss, "evaluation": record.evaluation, "privacy": record.privacy,
            "secure": record.secure, "aggregation_seconds": round(record.aggregation_seconds, 4),
            "clients": [{"partition": c.partition, "node": c.node, "examples": c.examples, "steps": c.steps,
                         "loss": c.loss, "seconds": round(c.seconds, 4), "error": c.error,
                         "update_norm": c.update_norm, "anomaly": c.anomaly, "cosine": c.cosine}
                        for c in record.clients]}


def job_spec(recipe: Any) -> JobSpec:
    """What each process of a deployed job rebuilds: the recipe's architecture and dataset (a pretrained or
    folder model has no architecture a SuperNode could rebuild by name)."""
    model = recipe.model
    if not model.architecture:
        raise ConfigError("federate on a deployment (--superlink) rebuilds the model on every SuperNode from a "
                          "registered architecture; this recipe's model is not one (model.architecture: "
                          "digits-cnn, char-gpt, …)")
    return JobSpec(architecture=model.architecture, options=dict(model.options), dataset=recipe.data.dataset,
                   dataset_options=dict(recipe.data.options))


@STEPS.register("federate")
class Federate:
    name: ClassVar[str] = "federate"
    Config: ClassVar[type[Config]] = FederateStepConfig
    description: ClassVar[str] = "federated learning on Flower: clients keep their data; strategy and split by name"

    def preflight(self, plan: Preflight, config: Any) -> None:
        """Array data with train and test splits, or a character corpus with documents and ``local.steps``; enough
        units for the clients; Flower installed."""
        dataset = federated_data(plan.splits, getattr(plan.dataset, "label_names", None))
        if not isinstance(dataset, ArrayClassification | CharCorpus | TextClassification):
            raise ConfigError(f"the {self.name} step trains on an array dataset, a character corpus or a text "
                              f"classification dataset (e.g. digits, shakespeare-char, shakespeare-genre); "
                              f"{plan.recipe.data.dataset!r} is none of them")
        fcfg = config.federated_config(plan.recipe.seed)
        if config.lora is not None:
            from nnforge.recipes.steps.finetune import check_lora_fits

            if not isinstance(dataset, TextClassification):
                raise ConfigError("federate: lora adapts a text classifier; this recipe's data is not text")
            if fcfg.deployment is not None:
                raise ConfigError("federate: lora runs on the simulation engine for now (the SuperNodes rebuild "
                                  "the model by architecture name)")
            check_lora_fits(plan.model, config.lora)
        check_federation(dataset, fcfg, plan.model)
        if fcfg.deployment is not None:
            job_spec(plan.recipe)

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        fcfg = config.federated_config(ctx.seed)
        engine = "simulation" if fcfg.deployment is None else "deployment"
        ctx.ledger.append("federated.started", {"config": fcfg.to_dict(), "engine": engine,
                                                **({"superlink": fcfg.deployment.superlink}
                                                   if fcfg.deployment is not None else {}),
                                                "dataset": ctx.recipe.data.dataset,
                                                "lora": config.lora.model_dump(mode="json") if config.lora else None},
                          run=ctx.run_id)
        progress = ctx.progress

        def record(r: RoundRecord) -> None:
            ctx.ledger.append("federated.round", _round_event(r), run=ctx.run_id)
            if progress:
                progress(self.name, r.round, fcfg.rounds)

        spec = job_spec(ctx.recipe) if fcfg.deployment is not None else None
        if config.lora is not None:
            apply_lora_(ctx.model, config.lora, None)
        data = federated_data(ctx.data, ctx.model_spec.get("label_names"))
        result = federate_(ctx.model, data, fcfg, callbacks=[record], spec=spec)
        merged = merge_lora_(ctx.model) if config.lora is not None else 0
        final = result.final
        done = {"engine": result.engine, "lora_merged": merged, "rounds": len(result.rounds), "final": final, "seconds": round(result.seconds, 3),
                "bytes_per_round": result.bytes_per_round, "stopped": result.stopped, "partition": result.partition}
        ctx.ledger.append("federated.finished", done, run=ctx.run_id)
        ctx.save_model(config.variant, ctx.model, {**ctx.model_spec,
                                                   "transforms": list(ctx.model_spec.get("transforms", []))})
        ctx.sections[self.name] = {**result.to_dict(), "strategy": fcfg.strategy, "variant": config.variant}
        metrics: dict[str, Any] = {"federated_rounds": len(result.rounds), "federated_clients": fcfg.clients,
                                   "federated_seconds": result.seconds,
                                   "federated_bytes_per_round": result.bytes_per_round}
        metrics.update({f"val_{k}": v for k, v in final.items()})
        if result.privacy is not None:
            metrics["federated_epsilon"] = result.privacy["epsilon"]
            metrics["federated_delta"] = result.privacy["delta"]
        return StepResult(metrics=metrics, details=done)
