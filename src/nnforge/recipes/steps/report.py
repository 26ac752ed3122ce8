"""Step ``report``: the run's self-contained HTML report, rendered from its files and ledger events."""

from __future__ import annotations

from typing import Any, ClassVar

from nnforge.config import Config
from nnforge.govern.report import write_report
from nnforge.recipes.steps._base import STEPS, NoOptions, RunContext, StepResult


@STEPS.register("report")
class Report:
    name: ClassVar[str] = "report"
    Config: ClassVar[type[Config]] = NoOptions
    description: ClassVar[str] = "self-contained HTML report (data, baselines, variants, steps, artifacts, ledger head)"

    def run(self, ctx: RunContext, config: Any) -> StepResult:
        ctx.flush()  # the report reads metrics.json and sections.json as they stand now
        path = write_report(ctx.run_dir, ctx.ledger)
        ctx.record_file("report", path)
        return StepResult(artifacts={"report": str(path)})
