"""``nnforge ledger show|verify|export``."""

from __future__ import annotations

from typing import Annotated

import typer

from nnforge.cli._common import ledger_location, out, print_json

app = typer.Typer(help="Inspect, verify and export the audit ledger.", no_args_is_help=True)

LedgerOpt = Annotated[str | None, typer.Option("--ledger", help="Ledger database (default .nnforge/ledger.db).")]


def _open(location: str | None) -> object:
    from pathlib import Path

    from nnforge.errors import ConfigError
    from nnforge.ledger import Ledger

    loc = ledger_location(location)
    if "://" not in loc and not Path(loc).is_file():
        raise ConfigError(f"{loc}: no ledger there. Run a recipe first or pass --ledger PATH.")
    return Ledger.open(loc)


@app.command()
def show(
    ledger: LedgerOpt = None,
    run: Annotated[str | None, typer.Option(help="Only the events of this run id.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only events of this kind (e.g. step.finished).")] = None,
    limit: Annotated[int, typer.Option(help="Show the newest N events (0: all).")] = 30,
    json_: Annotated[bool, typer.Option("--json", help="Print events as JSON.")] = False,
) -> None:
    """List ledger events, newest last."""
    from rich.table import Table

    led = _open(ledger)
    events = led.events(run=run, kind=kind)  # type: ignore[attr-defined]
    if limit > 0:
        events = events[-limit:]
    if json_:
        print_json([e.to_dict() for e in events])
        return
    table = Table(show_header=True)
    for col in ("#", "time (UTC)", "run", "kind", "actor", "hash"):
        table.add_column(col)
    for e in events:
        table.add_row(str(e.seq), e.time[:19], e.run or "", e.kind, e.actor, e.hash[:12])
    out.print(table)


@app.command()
def verify(
    ledger: LedgerOpt = None,
    head: Annotated[str | None, typer.Option(help="A head hash issued earlier (report, signature): it must "
                                                  "still be in the chain.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check the hash chain; exit 1 and name the first broken event if anything was changed."""
    led = _open(ledger)
    result = led.verify(head=head)  # type: ignore[attr-defined]
    if json_:
        print_json(result.to_dict())
    elif result.ok:
        out.print(f"[green]ok[/]: {result.events} events, head {result.head}")
    else:
        at = f" at event #{result.broken_seq}" if result.broken_seq else ""
        out.print(f"[red]BROKEN{at}[/]: {result.reason}")
    if not result.ok:
        raise typer.Exit(1)


@app.command()
def export(
    path: Annotated[str, typer.Argument(help="Output JSONL file (one event per line, with hashes).")],
    ledger: LedgerOpt = None,
) -> None:
    """Export every event to JSONL (for archiving or offline verification)."""
    led = _open(ledger)
    n = led.export_jsonl(path)  # type: ignore[attr-defined]
    out.print(f"wrote {n} events to {path}")
