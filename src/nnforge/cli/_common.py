"""Shared pieces of the CLI: consoles, error handling, progress bars, JSON output."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

STATE: dict[str, Any] = {"debug": False}


def safe(text: str | None) -> str:
    """Untrusted text made harmless for a terminal: control characters (ESC, CR, …) become ``\\xNN``."""
    if text is None:
        return ""
    return "".join(c if c.isprintable() or c == "\n" else f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                   for c in text)


def ledger_location(given: str | None) -> str:
    return given or os.environ.get("NNFORGE_LEDGER") or os.path.join(".nnforge", "ledger.db")


def existing_ledger(given: str | None) -> str:
    """The ledger location for a command that reads or acts on existing records: it must already hold a
    ledger (a database URL is taken as given), so a mistyped path is an error, never a new empty ledger."""
    from nnforge.errors import ConfigError

    loc = ledger_location(given)
    if "://" not in loc:
        if not os.path.isfile(loc):
            raise ConfigError(f"{loc}: no ledger there. Run a recipe first or pass --ledger PATH.")
        if not loc.endswith(".jsonl"):  # an export is read as such
            _check_is_ledger(loc)
    return loc


def _check_is_ledger(path: str) -> None:
    """An existing file must be an nnforge ledger (an SQLite database with an ``events`` table), read without
    writing: opening any other database as a ledger would add the ledger's tables to it."""
    import sqlite3
    from pathlib import Path

    from nnforge.errors import ConfigError

    with open(path, "rb") as f:
        magic = f.read(16)
    if magic != b"SQLite format 3\x00":
        what = "an empty file" if not magic else "not an SQLite database"
        raise ConfigError(f"{path}: {what}, not an nnforge ledger. Pass the ledger's path (--ledger PATH).")
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
        try:
            found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError:
        return  # unreadable this way (damaged, or read-only storage): opening it reports what is wrong
    if found is None:
        raise ConfigError(f"{path}: an SQLite database without ledger events, not an nnforge ledger. Pass the "
                          "ledger's path (--ledger PATH).")


def _run_facts(run_dir: os.PathLike[str] | str) -> tuple[str | None, str | None]:
    """The run id and the ledger file a run recorded in its config.json (a URL is recorded redacted: None)."""
    try:
        with open(os.path.join(run_dir, "config.json"), encoding="utf-8") as f:
            config = json.load(f)
        run_id, loc = config.get("run_id"), config.get("ledger")
    except (OSError, ValueError, AttributeError):
        return None, None
    return (run_id if isinstance(run_id, str) else None,
            loc if isinstance(loc, str) and "://" not in loc and os.path.isfile(loc) else None)


def run_ledger(given: str | None, run_dir: os.PathLike[str] | str, *, create: bool = False) -> str:
    """The ledger for a command on a finished run: ``--ledger`` or ``NNFORGE_LEDGER`` when given; else the
    default ``.nnforge/ledger.db`` here when it recorded the run; else the ledger the run recorded (so a command
    run from another folder still finds it); else the default. Only commands that write new records
    (``create``) may start a new ledger."""
    if not given and not os.environ.get("NNFORGE_LEDGER"):
        from nnforge.govern.integrity import records_run

        run_id, recorded = _run_facts(run_dir)
        here = ledger_location(None)
        if run_id and recorded and recorded != os.path.abspath(here) and not (
                os.path.isfile(here) and records_run(here, run_id)):
            _warn_if_copied(run_dir, recorded)
            return recorded
        if recorded and recorded == os.path.abspath(here):
            _warn_if_copied(run_dir, recorded)
    return ledger_location(given) if create else existing_ledger(given)


def _warn_if_copied(run_dir: os.PathLike[str] | str, ledger: str) -> None:
    """A run folder copied elsewhere still names its original workspace's ledger: say so, naming both."""
    from nnforge.runs import copied_from

    origin = copied_from(run_dir)
    if origin is not None:
        logging.getLogger("nnforge.cli").warning(
            "run folder %s is a copy of %s: its records go to the original workspace's ledger %s (pass --ledger "
            "to record them elsewhere)", os.path.abspath(run_dir), origin, ledger)


def record_cli(command: str, data: dict[str, Any], *, ledger: str | None, actor: str | None,
               run: str | None = None) -> None:
    """Append a ``cli.<command>`` event (who, what, inputs and outputs by sha256) to the ledger."""
    from nnforge.ledger import Ledger

    led = Ledger.open(ledger_location(ledger), actor=actor)
    try:
        led.append(f"cli.{command}", data, run=run)
    finally:
        led.close()


def read_text_lines(path: os.PathLike[str] | str) -> list[str]:
    """A user's text file, one text per line: UTF-8 (a byte-order mark is dropped), blank lines skipped."""
    from nnforge.errors import DataError, not_utf8

    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file (expected one text per line)")
    try:
        with open(path, encoding="utf-8-sig") as f:
            lines = [ln.strip() for ln in f.read().splitlines()]
    except UnicodeDecodeError as exc:
        raise DataError(not_utf8(path, exc)) from None
    return [ln for ln in lines if ln]


def texts_sha256(texts: list[str]) -> str:
    import hashlib

    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8") + b"\0")
    return h.hexdigest()


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# transformers imports torchao when it is installed (a benchmark peer here), which warns about CUDA libraries a CPU
# machine lacks and about Triton; torch warns about torchao's deprecated pytree registrations
NOISY_LOGGERS = ("torchao", "torch.utils._pytree")


def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if STATE["debug"] else logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=console, show_path=False)])
    if not STATE["debug"]:  # import-time noise nobody can act on; --debug shows it
        for name in NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)


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


def metrics_table(title: str, metrics: Mapping[str, object], keys: Sequence[str]) -> None:
    """Print ``keys`` of ``metrics`` as a two-column table (floats to 4 decimals) on stdout; nothing if no key."""
    from rich.table import Table

    if not keys:
        return
    table = Table(title=title, show_header=True)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in keys:
        v = metrics[k]
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    out.print(table)


def key_values(items: Sequence[str], flag: str, example: str) -> dict[str, Any]:
    """``["k=v", …]`` from a repeatable option → ``{k: YAML value of v}``; a malformed item is a ConfigError naming
    ``flag`` and an ``example`` (``"sparsity=0.5"``)."""
    import yaml

    from nnforge.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{flag} {item!r}: expected key=value, e.g. {flag} {example}")
        try:
            out[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = raw
    return out
