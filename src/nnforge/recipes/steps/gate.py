"""Step ``gate``: run a regression suite on the current model and stop the pipeline if it fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from nnforge.config import Config
from nnforge.errors import ConfigError, StepFailedError
from nnforge.evaluate import load_suite, run_suite
from nnforge.recipes.steps._base import STEPS, RunContext, StepResult


class GateStepConfig(Config):
    """Options of the ``gate`` step."""

    suite: str  # a built-in suite name or a YAML file
    variant: str | None = None  # which model variant to judge (default: the latest)
    baseline: str | None = None  # a finished run (folder or id) for 'baseline' checks
    baseline_variant: str | None = None
    enforce: bool = True  # False: record the verdict (ledger, JUnit, report) but let the pipeline go on


def _split(ctx: RunContext, name: str) -> Any:
    if "dataset" in ctx.data:
        ds = ctx.data["dataset"]
        if name not in ds.splits:
            raise ConfigError(f"gate: the suite evaluates split {name!r}; the data has {sorted(ds.splits)}")
        x, y = ds.splits[name]
        return torch.from_numpy(np.asarray(x)).float(), torch.from_numpy(np.asarray(y)).long()
    if name not in ctx.data:
        raise ConfigError(f"gate: the suite evaluates split {name!r}; the data has {sorted(ctx.data)}")
    return ctx.data[name]


@STEPS.register("gate")
class Gate:
    name: ClassVar[str] = "gate"
    Config: ClassVar[type[Config]] = GateStepConfig
    description: ClassVar[str] = "regression suite; the pipeline stops here if a check fails"

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        from nnforge.recipes.runs import load_run
        from nnforge.recipes.suites import SuiteTarget, gather_inputs, record_suite

        suite = load_suite(config.suite)
        models = ctx.variants or {"model": ctx.model}
        variant = config.variant or next(reversed(models))
        label_names = list(ctx.model_spec.get("label_names") or [])
        target = SuiteTarget(models, {v: ctx.run_dir / f for v, f in ctx.variant_files.items()},
                             _split(ctx, suite.split), label_names)
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
