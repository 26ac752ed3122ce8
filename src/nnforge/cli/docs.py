"""``nnforge docs RUN``: model card, instructions for use (Art. 13(3)) and Annex IV draft from the ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nnforge.cli._common import console, out, run_ledger


def docs(
    run: Annotated[str, typer.Argument(help="Run folder or run id.")],
    format_: Annotated[str, typer.Option("--format", help="md or html.")] = "md",
    out_dir: Annotated[str | None, typer.Option("--out", help="Folder to write to (default RUN/docs/).")] = None,
    ledger: Annotated[str | None, typer.Option("--ledger", help="Ledger database (default: the one the run wrote to).")] = None,
    runs_dir: Annotated[str, typer.Option(help="Folder where run ids are looked up.")] = "runs",
    allow_failed: Annotated[bool, typer.Option("--allow-failed", help="Write documents for a failed, interrupted or unfinished run (they say so at their top).")] = False,
    allow_modified: Annotated[bool, typer.Option("--allow-modified", help="Write documents although a run file differs from what the ledger recorded (the choice is recorded).")] = False,
    actor: Annotated[str | None, typer.Option(help="Who runs this (default: the OS user).")] = None,
) -> None:
    """Generate a model card, instructions for use and an Annex IV technical documentation draft for a run.

    Every figure cites the ledger event it came from (as a footnote); what the facts do not cover is marked TO BE
    COMPLETED BY THE PROVIDER. Exit 2 for an unknown run or ledger, a run file that differs from what the ledger
    recorded (unless --allow-modified), or a run that did not finish (unless --allow-failed); exit 1 when the
    ledger chain does not verify (the documents are still written, with a warning at their top, so the broken
    state is on record).
    """

    from nnforge.errors import ConfigError
    from nnforge.govern.documents import FORMATS, write_documents
    from nnforge.govern.integrity import verify_run
    from nnforge.ledger import Ledger
    from nnforge.recipes.runs import find_run

    if format_ not in FORMATS:
        raise ConfigError(f"--format {format_!r}: expected one of {', '.join(FORMATS)}")
    run_dir = find_run(run, runs_dir)
    if out_dir is not None and Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ConfigError(f"--out {out_dir}: is a file; give a folder for the three documents")
    led = Ledger.open(run_ledger(ledger, run_dir), actor=actor)
    try:
        check = verify_run(run_dir, use="docs", ledger=led, allow_modified=allow_modified, actor=actor)
        if check.recorded_status != "finished" and not allow_failed:
            raise ConfigError(f"{run_dir}: the run is {check.recorded_status}, not finished: its documents would "
                              "describe a model that did not complete its recipe. Pass --allow-failed to write them "
                              "anyway (they say so at their top)")
        paths, verification = write_documents(run_dir, led, format_, out_dir)
    finally:
        led.close()
    for p in paths:
        out.print(f"{p}", markup=False, highlight=False)
    if not verification.ok:
        console.print(f"[red bold]ledger chain BROKEN[/] at event #{verification.broken_seq}: {verification.reason}; "
                      "the documents carry this warning")
        raise typer.Exit(1)
