"""``nnforge runs list|show|compare|rm``: the run folders under ``runs/`` and their status.

A run's status is the one its folder records (running, finished, failed, interrupted), except that a "running"
run whose process on this machine is gone is shown as interrupted. ``rm`` moves folders to ``runs/.trash/``;
the ledger keeps every event of the run and gains a ``run.deleted`` event naming who removed it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from nnforge.cli._common import console, out, print_json, run_ledger, safe

app = typer.Typer(help="List, inspect, compare and remove runs.", no_args_is_help=True)

RunsDirOpt = Annotated[str, typer.Option("--runs-dir", help="Folder holding the runs (default runs).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
LedgerOpt = Annotated[str | None, typer.Option(help="Ledger database (default: the one that recorded the run).")]
ActorOpt = Annotated[str | None, typer.Option(help="Deprecated: checked against the authenticated user (a name "
                                                   "is not taken on trust without a token).")]
TokenFileOpt = Annotated[Path | None, typer.Option("--token-file", help="File holding your token (default: the "
                                                   "NNFORGE_TOKEN environment variable); its user is recorded.")]
REMOVABLE = ("failed", "interrupted")  # what --failed selects


def acting_user(ledger: str, token_file: Path | None, claimed: str | None) -> str | None:
    """Who acts, as recorded in ``ledger``: the user whose token is given (NNFORGE_TOKEN or ``--token-file``),
    else ``None`` (the ledger's default, the OS user); a claimed ``--actor`` must be the token's user."""
    from nnforge.cli.users import acting_name

    return acting_name(ledger, token_file, claimed)


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if v is None or isinstance(v, (int, float, str, bool))}


def _metrics(folder: Path) -> dict[str, Any]:
    from nnforge import runs
    from nnforge.errors import IntegrityError

    try:
        return runs.read_metrics(folder)
    except IntegrityError:
        return {}


def _summary(folder: Path, config: dict[str, Any] | None, status: str) -> dict[str, Any]:
    config = config or {}
    recipe: dict[str, Any] = config["recipe"] if isinstance(config.get("recipe"), dict) else {}
    return {"run_id": config.get("run_id", folder.name), "folder": str(folder), "status": status,
            "created": config.get("created"), "ended": config.get("ended"), "recipe": recipe.get("name"),
            "final_variant": config.get("final_variant"), "metrics": _scalars(_metrics(folder)) if config else {}}


def _headline(row: dict[str, Any]) -> str:
    metrics, final = row["metrics"], row["final_variant"]
    for key in (f"{final}_acc", "val_accuracy", "val_loss", "fp32_acc"):
        if isinstance(metrics.get(key), (int, float)) and not isinstance(metrics.get(key), bool):
            return f"{key}={metrics[key]:.4f}"
    return ""


@app.command("list")
def list_(
    runs_dir: RunsDirOpt = "runs",
    status: Annotated[str | None, typer.Option(help="Only runs with this status: running, finished, failed, "
                                                    "interrupted.")] = None,
    json_: JsonOpt = False,
) -> None:
    """List the runs, oldest first, with their status and headline figure."""
    from rich.table import Table
    from rich.text import Text

    from nnforge import runs
    from nnforge.errors import ConfigError

    if status is not None and status not in runs.STATUSES:
        raise ConfigError(f"--status {status!r}: give one of {', '.join(runs.STATUSES)}")
    rows = [_summary(folder, config, st) for folder, config, st in runs.list_runs(runs_dir)
            if status is None or st == status]
    if json_:
        print_json(rows)
        return
    table = Table(show_header=True, title=f"runs in {safe(runs_dir)}")
    table.add_column("run", no_wrap=True)  # an id is copied from here: never cut
    for col in ("created (UTC)", "recipe", "status", "final", "figure"):
        table.add_column(col)
    for r in rows:
        created = str(r["created"] or "")[:16].replace("T", " ")
        table.add_row(Text(safe(r["run_id"])), Text(safe(created)), Text(safe(r["recipe"])),
                      r["status"], Text(safe(r["final_variant"])), _headline(r))
    out.print(table)


def _open_run(run: str, runs_dir: str) -> tuple[Path, dict[str, Any], str]:
    from nnforge import runs

    folder = runs.find_run(run, runs_dir)
    config = runs.read_config(folder)
    return folder, config, runs.status_of(config)


@app.command()
def show(run: Annotated[str, typer.Argument(help="A run id or run folder.")], runs_dir: RunsDirOpt = "runs",
         json_: JsonOpt = False) -> None:
    """A run's status, recipe, variants, artifacts and metrics."""
    from nnforge import runs

    folder, config, status = _open_run(run, runs_dir)
    recipe = config.get("recipe") or {}
    doc = {**_summary(folder, config, status), "recipe_sha256": recipe.get("sha256"), "seed": recipe.get("seed"),
           "steps": [s.get("name") for s in recipe.get("steps", []) if isinstance(s, dict)],
           "host": config.get("host"), "pid": config.get("pid"), "ledger": config.get("ledger"),
           "variants": config.get("variants", {}), "artifacts": config.get("artifacts", {}),
           "copied_from": str(runs.copied_from(folder) or "") or None}
    if json_:
        print_json(doc)
        return
    for key in ("run_id", "status", "folder", "copied_from", "recipe", "recipe_sha256", "seed", "steps", "created",
                "ended", "host", "pid", "ledger", "final_variant", "variants", "artifacts"):
        if doc.get(key) not in (None, "", [], {}):
            out.print(f"{key}: {safe(str(doc[key]))}", markup=False)
    for key, value in doc["metrics"].items():
        out.print(f"  {key}: {safe(str(value))}", markup=False)


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _flatten(item, f"{prefix[:-1]}[{i}].").items()}
    return {prefix[:-1]: value}


def _recipe_diff(configs: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """Recipe fields whose values differ between runs (its path and hash left out: they follow the rest)."""
    flat = [_flatten({k: v for k, v in (c.get("recipe") or {}).items() if k not in ("path", "sha256")})
            for c in configs]
    keys = sorted({k for f in flat for k in f})
    return {k: [f.get(k) for f in flat] for k in keys if len({repr(f.get(k)) for f in flat}) > 1}


@app.command()
def compare(runs_: Annotated[list[str], typer.Argument(metavar="RUN...", help="Two or more run ids or folders.")],
            runs_dir: RunsDirOpt = "runs", json_: JsonOpt = False) -> None:
    """Metrics side by side and the recipe fields that differ."""
    from rich.table import Table
    from rich.text import Text

    from nnforge.errors import ConfigError

    if len(runs_) < 2:
        raise ConfigError("runs compare: give at least two runs")
    opened = [_open_run(r, runs_dir) for r in runs_]
    ids = [str(c.get("run_id", f.name)) for f, c, _ in opened]
    metrics = [_scalars(_metrics(f)) for f, _, _ in opened]
    keys = sorted({k for m in metrics for k in m})
    status = [s for _, _, s in opened]
    table_metrics = {k: [m.get(k) for m in metrics] for k in keys}
    diff = _recipe_diff([c for _, c, _ in opened])
    if json_:
        print_json({"runs": ids, "status": status, "metrics": table_metrics, "recipe_diff": diff})
        return
    tables: tuple[tuple[str, dict[str, list[Any]]], ...] = (("metrics", {"status": list(status), **table_metrics}),
                                                            ("recipe differences", diff))
    for title, rows in tables:
        table = Table(show_header=True, title=title)
        table.add_column("")
        for run_id in ids:
            table.add_column(Text(safe(run_id)), justify="right")
        for key, values in rows.items():
            table.add_row(Text(safe(key)), *(Text(safe(f"{v:.4f}" if isinstance(v, float) else str(v)))
                                             for v in values))
        out.print(table if rows else f"{title}: none")


def _targets(names: list[str], failed: bool, runs_dir: str) -> list[tuple[Path, dict[str, Any], str]]:
    from nnforge import runs
    from nnforge.errors import ConfigError

    if not names and not failed:
        raise ConfigError("runs rm: name the runs to remove, or pass --failed (every failed or interrupted run)")
    picked = [_open_run(n, runs_dir) for n in names]
    if failed:
        picked += [(f, c, s) for f, c, s in runs.list_runs(runs_dir) if c is not None and s in REMOVABLE]
    unique = {str(f.resolve()): (f, c, s) for f, c, s in picked}
    live = [str(c.get("run_id", f.name)) for f, c, s in unique.values() if s == "running"]
    if live:
        raise ConfigError(f"runs rm: {live} are still running; stop them first (their status says running and "
                          "their process is alive)")
    return list(unique.values())


def _confirm(count: int, yes: bool) -> None:
    from nnforge.errors import ConfigError

    if yes:
        return
    if not sys.stdin.isatty():
        raise ConfigError(f"runs rm: would move {count} run(s) to the trash; pass --yes to do it without asking "
                          "(no terminal to ask on)")
    typer.confirm(f"move {count} run(s) to the trash?", abort=True)


@app.command("rm")
def rm(
    runs_: Annotated[list[str] | None, typer.Argument(metavar="[RUN]...", help="Run ids or folders.")] = None,
    failed: Annotated[bool, typer.Option("--failed", help="Every failed or interrupted run.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask (needed without a terminal).")] = False,
    runs_dir: RunsDirOpt = "runs", ledger: LedgerOpt = None, token_file: TokenFileOpt = None,
    actor: ActorOpt = None, json_: JsonOpt = False,
) -> None:
    """Move runs to the trash (runs/.trash/); their ledger events stay and a run.deleted event records who
    (the user whose token is in NNFORGE_TOKEN or --token-file, else the OS user)."""
    from nnforge import runs
    from nnforge.ledger import Ledger

    targets = _targets(list(runs_ or []), failed, runs_dir)
    if not targets:
        console.print("no run to remove")
        if json_:
            print_json([])
        return
    # each run's ledger and who acts there, all settled before anything moves
    where = [run_ledger(ledger, folder) for folder, _, _ in targets]
    who = [acting_user(loc, token_file, actor) for loc in where]
    _confirm(len(targets), yes)
    done = []
    for (folder, config, status), loc, name in zip(targets, where, who, strict=True):
        run_id = str(config.get("run_id", folder.name))
        led = Ledger.open(loc, actor=name)
        try:
            dest = runs.move_to_trash(folder)
            try:
                led.append("run.deleted", {"run_dir": str(folder), "trash": str(dest), "status": status}, run=run_id)
            except BaseException:
                dest.rename(folder)  # a removal the ledger does not record is not made
                raise
        finally:
            led.close()
        done.append({"run_id": run_id, "status": status, "trash": str(dest)})
        if not json_:
            out.print(f"moved {safe(run_id)} ({status}) to {safe(str(dest))}", markup=False)
    if json_:
        print_json(done)
