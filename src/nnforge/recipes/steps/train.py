"""Step ``train``: train the recipe's model from its current weights with :func:`nnforge.train.fit`.

The optimizer and the schedule are chosen by name in the recipe; the optimizer's options are validated
by its registered config when the recipe is read. Works for the character LM (``shakespeare-char``,
models returning ``(logits, loss)``) and for array classification (``digits``).
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, ValidationError, model_validator

from nnforge.compress.quantize.qat import QATConfig, qat_callback
from nnforge.config import Config, describe_validation_error
from nnforge.data import ArrayClassification, CharCorpus
from nnforge.errors import ConfigError, DataError, StepFailedError
from nnforge.hardware import EnergyMeter, energy_label
from nnforge.recipes.steps._base import STEPS, Preflight, RunContext, StepResult
from nnforge.recipes.steps._moe import MoETraining, has_moe
from nnforge.train import Event, TensorBatches, TrainConfig, accuracy, fit, hessian_refresh, on

TRAIN_CALLBACKS = "train_callbacks"
"""``ctx.shared`` key: extra :mod:`nnforge.train` callbacks every training step's ``fit`` receives (a search trial's
pruning reporter, for instance)."""


class TrainStepConfig(Config):
    """Options of the ``train`` step."""

    optimizer: str = "adamw"
    optimizer_options: dict[str, Any] = Field(default_factory=dict)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(max_steps=500, eval_every=100))
    batch_size: int = Field(12, ge=1)
    block_size: int | None = Field(None, ge=2, description="character LM context; default: the model's")
    eval_batches: int = Field(50, ge=1)
    routing_every: int | None = Field(None, ge=1, description="MoE models: sample the routing every N steps "
                                                               "(default: about 50 samples per run)")
    routing_batches: int = Field(8, ge=1, le=1000, description="MoE models: batches per document group (and for "
                                                                "the drift) measured after training")
    groups: list[str] | None = Field(None, min_length=1, description="character corpora: train only on these "
                                     "document groups (shakespeare-char: comedy, tragedy, history, poems)")
    freeze_router: bool = Field(False, description="MoE models: freeze every router (fine-tuning moves no token "
                                                   "to another expert)")

    @model_validator(mode="after")
    def _known_optimizer(self) -> TrainStepConfig:
        from nnforge.optim import OPTIMIZERS

        if self.train.seed != 0:  # it would be replaced by the recipe's seed, yet recorded as given
            raise ValueError(f"train.seed {self.train.seed}: in a recipe the top-level seed seeds training "
                             "(and data and model); set that instead (e.g. --set seed=5)")

        if self.optimizer not in OPTIMIZERS:
            raise ValueError(OPTIMIZERS.unknown_message(self.optimizer))
        spec = OPTIMIZERS.get(self.optimizer)
        unknown = sorted(set(self.optimizer_options) - set(spec.config.model_fields))
        if unknown:
            raise ValueError(f"unknown option {unknown[0]!r} for optimizer {self.optimizer!r}; "
                             f"allowed: {', '.join(sorted(spec.config.model_fields))}")
        try:
            spec.config.model_validate(self.optimizer_options)
        except ValidationError as exc:
            raise ValueError("; ".join(describe_validation_error(exc, prefix="optimizer_options"))) from None
        return self


def _lm_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """The LM loss; in training, plus the balancing losses of MoE layers the model does not add itself."""
    from nnforge.moe import add_balancing_loss

    x, y = batch
    return add_balancing_loss(model, lambda: model(x, y)[1])


@STEPS.register("train")
class Train:
    name: ClassVar[str] = "train"
    Config: ClassVar[type[Config]] = TrainStepConfig
    description: ClassVar[str] = "train with nnforge's loop; optimizer (adamw, soap, muon, …) and schedule by name"

    def preflight(self, plan: Preflight, config: Any) -> None:
        """The data is a character corpus or an array dataset with train and test splits; a character LM's
        ``block_size`` fits the model's context."""
        dataset = plan.splits.get("dataset")
        if isinstance(dataset, ArrayClassification):
            missing = [s for s in ("train", "test") if s not in dataset.splits]
            if missing:
                raise DataError(f"the {self.name} step trains on split 'train' and evaluates on 'test'; dataset "
                                f"{dataset.name!r} has no {missing} (it has {sorted(dataset.splits)})")
        elif isinstance(dataset, CharCorpus):
            if config.groups is not None:
                dataset.restrict(config.groups)  # names the groups it has when one is unknown
            have = getattr(getattr(plan.model, "config", None), "block_size", None)
            if config.block_size is not None and isinstance(have, int) and config.block_size > have:
                raise ConfigError(f"block_size {config.block_size} is longer than the model's context "
                                  f"(block_size {have}); set it to at most {have} or leave it out")
        else:
            raise ConfigError(f"the {self.name} step trains on a character corpus or an array dataset (e.g. "
                              f"shakespeare-char, digits); {plan.recipe.data.dataset!r} is neither")
        if config.groups is not None and not isinstance(dataset, CharCorpus):
            raise ConfigError(f"the {self.name} step's groups option selects documents of a character corpus; "
                              f"{plan.recipe.data.dataset!r} is not one")
        if config.freeze_router and not has_moe(plan.model):
            raise ConfigError(f"the {self.name} step's freeze_router needs a model with MoE layers (e.g. "
                              "architecture moe-gpt); this one has none")

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        from nnforge.optim import build_optimizer

        dataset = ctx.data.get("dataset")
        gen = torch.Generator().manual_seed(ctx.seed)
        if isinstance(dataset, CharCorpus):
            block = config.block_size or getattr(getattr(ctx.model, "config", None), "block_size", 64)
            corpus = dataset.restrict(config.groups) if config.groups else dataset
            train_data: Any = lambda step: corpus.batch(  # noqa: E731  (the batch contract: step → batch)
                "train", config.batch_size, block, torch.Generator().manual_seed(ctx.seed * 1_000_003 + step))
            eval_data: Any = [corpus.batch("val", config.batch_size, block, gen) for _ in range(config.eval_batches)]
            loss_fn: Any = _lm_loss
            metric_fn: Any = None
        elif isinstance(dataset, ArrayClassification):
            x, y = (torch.from_numpy(a) for a in dataset.splits["train"])
            xt, yt = (torch.from_numpy(a) for a in dataset.splits["test"])
            train_data = TensorBatches(x, y, batch_size=config.batch_size, seed=ctx.seed)
            eval_data = TensorBatches(xt, yt, batch_size=256, shuffle=False)
            loss_fn, metric_fn = None, accuracy
        else:
            raise StepFailedError("the train step trains on shakespeare-char or digits-like array datasets")
        optimizer = build_optimizer(config.optimizer, ctx.model, **config.optimizer_options)
        callbacks = [*self.callbacks(config), *ctx.shared.get(TRAIN_CALLBACKS, ())]
        if hasattr(optimizer, "update_hessian"):
            callbacks.append(hessian_refresh(optimizer))
        if ctx.progress:
            progress = ctx.progress
            total = config.train.max_steps
            callbacks.append(on(Event.STEP_END, lambda s: progress(self.name, s.step, total)))
        train_cfg = config.train if config.train.seed == ctx.seed else config.train.replace(seed=ctx.seed)
        moe = MoETraining(ctx, config, self.name) if has_moe(ctx.model) else None
        if moe is not None:
            callbacks.append(moe.monitor)
        # the training run's energy: RAPL counters where readable, else the labelled CPU-time estimate
        meter = EnergyMeter()
        with meter:
            result = fit(ctx.model, train_data, config=train_cfg, optimizer=optimizer, eval_data=eval_data,
                         loss_fn=loss_fn, metric_fn=metric_fn, callbacks=callbacks)
        energy = {**meter.reading.to_dict(), "label": energy_label(meter.reading)}
        self.save(ctx, config)
        ctx.sections[self.name] = {"evals": result.evals, "optimizer": config.optimizer, "energy": energy}
        final = result.evals[-1] if result.evals else {}
        metrics = {"train_steps": result.steps, "train_seconds": result.seconds,
                   "train_final_loss": result.losses[-1] if result.losses else float("nan"),
                   "train_energy_j": energy["joules"]}
        metrics.update({f"val_{k}": v for k, v in final.items() if isinstance(v, (int, float)) and k != "step"})
        if moe is not None:
            block = config.block_size or getattr(getattr(ctx.model, "config", None), "block_size", 64)
            metrics.update(moe.finish(dataset, eval_data if isinstance(dataset, CharCorpus) else [],
                                      config.batch_size, block))
        return StepResult(metrics=metrics, details={"evals": result.evals, "energy": energy})

    def callbacks(self, config: Any) -> list[Any]:
        return []

    def save(self, ctx: RunContext, config: Any) -> None:
        # transforms that change the architecture before training (upcycling) stay in the spec: it rebuilds
        ctx.save_model("fp32", ctx.model, {**ctx.model_spec, "transforms": list(ctx.model_spec.get("transforms", []))})


class QATStepConfig(TrainStepConfig):
    """Options of the ``qat`` step: the ``train`` step's, plus the quantization trained for."""

    qat: QATConfig = Field(default_factory=QATConfig)
    start: Literal["fp32", "scratch"] = Field("fp32", description="fine-tune the fp32 variant, or train anew")
    variant: str | None = Field(None, description="saved variant name; default: qat-<fmt>")


@STEPS.register("qat")
class QAT(Train):
    """Quantization-aware training (fake quant + STE), then the model is packed and saved as a variant."""

    name: ClassVar[str] = "qat"
    Config: ClassVar[type[Config]] = QATStepConfig
    description: ClassVar[str] = "quantization-aware training (ternary, binary, int4, …), saved packed"

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        if config.start == "scratch":
            from nnforge.recipes.runs import build_base

            ctx.model = build_base(ctx.model_spec["base"], ctx.model_spec.get("num_classes"), seed=ctx.seed)
        else:  # a copy of the fp32 model, not a quantized variant an earlier step left as current
            ctx.model = copy.deepcopy(ctx.variants.get("fp32", ctx.model))
        return super().run(ctx, config)

    def callbacks(self, config: Any) -> list[Any]:
        self._callback = qat_callback(config.qat, convert=True)
        return [self._callback]

    def save(self, ctx: RunContext, config: Any) -> None:
        report = getattr(self._callback, "converted", None)
        transforms = [report.config] if report is not None else []
        ctx.save_model(config.variant or f"qat-{config.qat.fmt}", ctx.model, {**ctx.model_spec, "transforms": transforms})
