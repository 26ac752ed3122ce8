"""Step ``baselines``: majority class and frozen-embedding logistic regression on the test split."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from nnforge.adapt.probe import fit_linear_probe
from nnforge.config import Config
from nnforge.errors import StepFailedError
from nnforge.evaluate import accuracy, majority_accuracy
from nnforge.recipes.steps._base import STEPS, RunContext, StepResult


class BaselinesConfig(Config):
    """Options of the ``baselines`` step."""

    C: tuple[float, ...] = Field((0.3, 1.0, 3.0, 10.0), min_length=1)


@STEPS.register("baselines")
class Baselines:
    name: ClassVar[str] = "baselines"
    Config: ClassVar[type[Config]] = BaselinesConfig
    description: ClassVar[str] = "majority-class and frozen-embedding logistic-regression baselines"

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        if not hasattr(ctx.model, "embed"):
            raise StepFailedError("the baselines step needs a text model with embeddings")
        train, test, val = ctx.data["train"], ctx.data["test"], ctx.data.get("val")
        feats = {"train": ctx.model.embed(train.texts), "test": ctx.model.embed(test.texts),
                 "val": ctx.model.embed(val.texts) if val else None}
        if ctx.progress:
            ctx.progress("baselines", 1, 3)
        metrics: dict[str, Any] = {"baseline_majority_acc": majority_accuracy(train.labels, test.labels)}
        # plain logistic regression (the reference baseline), and the class-balanced variant the
        # fine-tuning starts from: both reported, so the comparison with the fine-tuned model is fair
        for suffix, weighting in (("", None), ("_balanced", "balanced")):
            probe = fit_linear_probe(feats["train"], train.labels, feats["val"], val.labels if val else None,
                                     Cs=config.C, num_classes=ctx.model.num_classes, class_weight=weighting)
            ctx.shared[f"linear_probe{suffix}"] = probe  # the finetune step may start its head from it (LP-FT)
            preds = probe.predict(feats["test"])
            # per-item test predictions: the evaluate step pairs them with the fine-tuned model's on the same items
            ctx.shared[f"baseline_logreg{suffix}_test_preds"] = preds.tolist()
            metrics[f"baseline_logreg{suffix}_acc"] = accuracy(test.labels, preds)
            metrics[f"baseline_logreg{suffix}_C"] = probe.C
            if ctx.progress:
                ctx.progress("baselines", 2 if not suffix else 3, 3)
        return StepResult(metrics=metrics)
