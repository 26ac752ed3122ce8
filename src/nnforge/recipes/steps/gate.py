"""Step ``gate``: run a regression suite on the current model and stop the pipeline if it fails.

Works for every classifier (text, images, tables, tensors) on the split the suite names. What the suite needs and
the data or the recipe cannot give (a split, text perturbations on array data, metadata slices, the run's
logistic-regression baseline without a ``baselines`` step, a baseline run) is refused by :meth:`Gate.preflight`,
before the run folder exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from nnforge.config import Config
from nnforge.errors import ConfigError, StepFailedError
from nnforge.evaluate import load_suite, run_suite
from nnforge.recipes.steps._base import STEPS, RunContext, StepResult
from nnforge.recipes.steps._eval_data import check_classifier, check_split, read_split, recipe_task


class GateStepConfig(Config):
    """Options of the ``gate`` step."""

    suite: str  # a built-in suite name or a YAML file
    variant: str | None = None  # which model variant to judge (default: the latest)
    baseline: str | None = None  # a finished run (folder or id) for 'baseline' checks
    baseline_variant: str | None = None
    enforce: bool = True  # False: record the verdict (ledger, JUnit, report) but let the pipeline go on


def _logreg_preds(recipe: Any, shared: dict[str, Any], split: str) -> list[int] | None:
    """The ``baselines`` step's logistic-regression predictions, when they are on ``split`` (the test split)."""
    preds = shared.get("baseline_logreg_test_preds")
    return list(preds) if preds is not None and split == recipe.data.test_split else None


@STEPS.register("gate")
class Gate:
    name: ClassVar[str] = "gate"
    Config: ClassVar[type[Config]] = GateStepConfig
    description: ClassVar[str] = "regression suite; the pipeline stops here if a check fails"

    def preflight(self, plan: Any, config: Any) -> None:
        """The suite loads, its split exists, and everything it compares with can be there when the gate runs."""
        from nnforge.recipes.runs import find_run
        from nnforge.recipes.suites import SuiteTarget, check_suite_fits

        suite = load_suite(config.suite)
        check_classifier("gate", recipe_task(plan.recipe), plan.splits)
        check_split("gate", f"suite {suite.name!r} evaluates split", suite.split, plan.recipe, plan.splits)
        needs = suite.needs()
        if needs["logreg"]:
            names = [s.name for s in plan.recipe.steps]
            here = next((i for i, s in enumerate(plan.recipe.steps) if s.name == "gate" and s.config == config), None)
            if "baselines" not in names[:here]:
                raise ConfigError(f"gate: suite {suite.name!r} compares with the run's logistic-regression baseline "
                                  "('logreg'); add a 'baselines' step before the gate")
            if suite.split != plan.recipe.data.test_split:
                raise ConfigError(f"gate: suite {suite.name!r} compares with the logreg baseline on split "
                                  f"{suite.split!r}, but the baselines step predicts the test split "
                                  f"{plan.recipe.data.test_split!r}")
        if config.baseline:
            find_run(config.baseline)
        split = read_split(plan.splits, plan.recipe, suite.split)
        check_suite_fits(suite, SuiteTarget({}, {}, split, list(getattr(plan.dataset, "label_names", []) or [])),
                         has_baseline=bool(config.baseline))

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        from nnforge.recipes.runs import load_run
        from nnforge.recipes.suites import SuiteTarget, gather_inputs, record_suite

        suite = load_suite(config.suite)
        check_classifier("gate", recipe_task(ctx.recipe), ctx.data)
        models = ctx.variants or {"model": ctx.model}
        variant = config.variant or next(reversed(models))
        label_names = list(ctx.model_spec.get("label_names") or [])
        target = SuiteTarget(models, {v: ctx.run_dir / f for v, f in ctx.variant_files.items()},
                             read_split(ctx.data, ctx.recipe, suite.split), label_names,
                             _logreg_preds(ctx.recipe, ctx.shared, suite.split))
        baseline = None
        if config.baseline:
            run = load_run(config.baseline)
            bv = config.baseline_variant or run.config.get("final_variant") or next(reversed(run.variants))
            if bv not in run.variants:
                raise ConfigError(f"gate: the baseline run has no variant {bv!r}; it has {sorted(run.variants)}")
            baseline = SuiteTarget({bv: run.model(bv)}, {}, target.split, run.label_names)
        inputs = gather_inputs(suite, target, variant, baseline=baseline, baseline_variant=config.baseline_variant,
                               progress=ctx.progress)
        result = run_suite(suite, inputs)
        files = record_suite(result, ctx.run_dir, ctx.ledger, ctx.run_id, variant=variant, suite_path=config.suite,
                             baseline=config.baseline, sections=ctx.sections,
                             weights=ctx.run_dir / ctx.variant_files[variant] if variant in ctx.variant_files else None)
        for name, path in files.items():
            ctx.record_file(f"suite:{suite.name}:{name}", Path(path))
        metrics = {f"gate_{suite.name}_passed": int(result.passed),
                   f"gate_{suite.name}_failed_checks": len(result.failed)}
        if not result.passed and config.enforce:
            failed = "; ".join(f"{c.spec.name} ({c.message})" for c in result.failed)
            raise StepFailedError(f"suite {suite.name!r} failed on variant {variant!r}: {failed}. "
                                  f"The pipeline stops here; see {files['junit']}")
        return StepResult(metrics=metrics, artifacts={k: str(v) for k, v in files.items()})
