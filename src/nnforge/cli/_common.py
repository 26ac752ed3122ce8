"""Shared pieces of the CLI: consoles, error handling, progress bars, JSON output."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

STATE: dict[str, Any] = {"debug": False}


def ledger_location(given: str | None) -> str:
    return given or os.environ.get("NNFORGE_LEDGER") or os.path.join(".nnforge", "ledger.db")


def existing_ledger(given: str | None) -> str:
    """The ledger location for a command that reads or acts on existing records: it must already hold a
    ledger (a database URL is taken as given), so a mistyped path is an error, never a new empty ledger."""
    from nnforge.errors import ConfigError

    loc = ledger_location(given)
    if "://" not in loc and not os.path.isfile(loc):
        raise ConfigError(f"{loc}: no ledger there. Run a recipe first or pass --ledger PATH.")
    return loc


def record_cli(command: str, data: dict[str, Any], *, ledger: str | None, actor: str | None,
               run: str | None = None) -> None:
    """Append a ``cli.<command>`` event (who, what, inputs and outputs by sha256) to the ledger."""
    from nnforge.ledger import Ledger

    led = Ledger.open(ledger_location(ledger), actor=actor)
    try:
        led.append(f"cli.{command}", data, run=run)
    finally:
        led.close()


def texts_sha256(texts: list[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if STATE["debug"] else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])


@contextmanager
def progress_bars() -> Iterator[Any]:
    """A rich progress display and a ``progress(task, done, total)`` callback that drives it."""
    columns = (TextColumn("[bold]{task.description:<12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=False, disable=not console.is_terminal and
                  os.environ.get("NNFORGE_PROGRESS") != "1") as bars:
        tasks: dict[str, Any] = {}

        def progress(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bars.add_task(task, total=total)
            bars.update(tasks[task], completed=done, total=total)

        yield progress
