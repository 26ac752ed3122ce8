"""``nnforge evaluate RUN --suite SUITE``: judge a finished run with a regression suite (exit 1 if it fails)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nnforge.cli._common import console, out, print_json, progress_bars, run_ledger


def evaluate(
    run: Annotated[str, typer.Argument(help="Run folder or run id.")],
    suite: Annotated[str, typer.Option("--suite", help="A suite YAML file or a built-in suite name.")],
    variant: Annotated[str | None, typer.Option(help="Model variant to judge (default: the run's final one).")] = None,
    baseline: Annotated[str | None, typer.Option(help="A baseline run (folder or id) for 'baseline' checks.")] = None,
    baseline_variant: Annotated[str | None, typer.Option(help="The baseline run's variant (default: its final).")] = None,
    junit: Annotated[Path | None, typer.Option(help="Where to write JUnit XML (default: in the run folder).")] = None,
    runs_dir: Annotated[str, typer.Option(help="Folder where run ids are looked up.")] = "runs",
    ledger: Annotated[str | None, typer.Option(help="Ledger database (default: the one the run wrote to).")] = None,
    actor: Annotated[str | None, typer.Option(help="Who runs this (default: the OS user).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    allow_modified: Annotated[bool, typer.Option("--allow-modified", help="Evaluate even if a run file differs from what the ledger recorded (the choice is recorded).")] = False,
) -> None:
    """Run a regression suite on a finished run; writes JSON, JUnit XML and a report section, records the
    suite's sha256 in the ledger, and exits 1 when a check fails."""
    from nnforge.errors import check_output_path
    from nnforge.evaluate import load_suite
    from nnforge.ledger import Ledger
    from nnforge.recipes.runs import find_run
    from nnforge.recipes.suites import evaluate_run

    s = load_suite(suite)
    if junit is not None:
        check_output_path(junit)  # before anything is written: results land together or not at all
    led = Ledger.open(run_ledger(ledger, find_run(run, runs_dir), create=True), actor=actor)
    with progress_bars() as progress:
        result, files = evaluate_run(run, s, ledger=led, variant=variant, baseline=baseline,
                                     baseline_variant=baseline_variant, runs_dir=runs_dir, junit=junit,
                                     suite_path=suite, progress=progress, allow_modified=allow_modified)
    if json_:
        print_json({**result.to_dict(), "files": {k: str(v) for k, v in files.items()}})
    else:
        from rich.table import Table

        table = Table(title=f"suite {result.suite} (sha256 {result.sha256[:12]}…)")
        for col in ("check", "verdict", "measured"):
            table.add_column(col)
        for c in result.checks:
            style = "green" if c.verdict == "pass" else "yellow" if c.passed else "red"
            table.add_row(c.spec.name, f"[{style}]{c.verdict}[/]", c.message)
        out.print(table)
        out.print(f"junit: {files['junit']}\nreport: {files['report']}")
    if not result.passed:
        console.print(f"[red bold]suite {result.suite} failed:[/] " + ", ".join(c.spec.name for c in result.failed))
        raise typer.Exit(1)
