"""Step ``baselines``: majority class and logistic regression on the recipe's test split.

For a text classifier the regression reads the model's frozen embeddings (the probe ``finetune`` may start from);
for a classifier over tensors (images, tables) it reads the raw inputs, flattened: the bar a trained network has to
clear. Either way its per-item test predictions are kept, so that ``evaluate`` and ``gate`` (a suite's ``logreg``
comparisons) pair them with the model's on the same items.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import Field

from nnforge.adapt.probe import fit_linear_probe
from nnforge.config import Config
from nnforge.errors import ConfigError, StepFailedError
from nnforge.evaluate import accuracy, majority_accuracy
from nnforge.recipes.steps._base import STEPS, RunContext, StepResult
from nnforge.recipes.steps._eval_data import TEXT_TASK, check_classifier, check_split, read_split, recipe_task


class BaselinesConfig(Config):
    """Options of the ``baselines`` step."""

    C: tuple[float, ...] = Field((0.3, 1.0, 3.0, 10.0), min_length=1)


@STEPS.register("baselines")
class Baselines:
    name: ClassVar[str] = "baselines"
    Config: ClassVar[type[Config]] = BaselinesConfig
    description: ClassVar[str] = "majority-class and logistic-regression baselines (frozen embeddings, or raw inputs)"

    def preflight(self, plan: Any, config: Any) -> None:
        """A classifier, train and test splits in the data, and embeddings where the data are texts."""
        task = recipe_task(plan.recipe)
        check_classifier("baselines", task, plan.splits)
        for role in ("train_split", "test_split"):
            check_split("baselines", f"data.{role} is", getattr(plan.recipe.data, role), plan.recipe, plan.splits)
        if task == TEXT_TASK and not hasattr(plan.model, "embed"):
            raise ConfigError("baselines: the text model has no embed(texts), so there is nothing to fit a probe on")

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        if recipe_task(ctx.recipe) != TEXT_TASK:
            return self._arrays(ctx, config)
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

    def _arrays(self, ctx: RunContext, config: Any) -> StepResult:
        """Logistic regression on the flattened raw inputs (C chosen on the validation split where there is one)."""
        spec = ctx.recipe.data
        (xtr, ytr), (xte, yte) = read_split(ctx.data, ctx.recipe, spec.train_split), \
            read_split(ctx.data, ctx.recipe, spec.test_split)
        has_val = bool(spec.val_split) and spec.val_split in ctx.data["dataset"].splits
        xv, yv = read_split(ctx.data, ctx.recipe, spec.val_split) if has_val else (None, None)
        probe = fit_linear_probe(xtr.flatten(1), ytr.tolist(), xv.flatten(1) if xv is not None else None,
                                 yv.tolist() if yv is not None else None, Cs=config.C if has_val else config.C[:1],
                                 num_classes=ctx.data["dataset"].num_classes)
        preds = probe.predict(xte.flatten(1))
        ctx.shared["baseline_logreg_test_preds"] = preds.tolist()
        return StepResult(metrics={"baseline_majority_acc": majority_accuracy(ytr.tolist(), yte.tolist()),
                                   "baseline_logreg_acc": accuracy(yte.tolist(), preds), "baseline_logreg_C": probe.C})
