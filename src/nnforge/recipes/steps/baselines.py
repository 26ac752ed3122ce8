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
        probe = fit_linear_probe(ctx.model.embed(train.texts), train.labels,
                                 ctx.model.embed(val.texts) if val else None, val.labels if val else None,
                                 Cs=config.C, num_classes=ctx.model.num_classes)
        ctx.shared["linear_probe"] = probe  # the finetune step starts its head from it (LP-FT)
        if ctx.progress:
            ctx.progress("baselines", 1, 2)
        logreg = accuracy(test.labels, probe.predict(ctx.model.embed(test.texts)))
        if ctx.progress:
            ctx.progress("baselines", 2, 2)
        return StepResult(metrics={"baseline_majority_acc": majority_accuracy(train.labels, test.labels),
                                   "baseline_logreg_acc": logreg, "baseline_logreg_C": probe.C})
