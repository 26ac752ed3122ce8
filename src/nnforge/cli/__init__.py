"""The ``nnforge`` command. Errors print without a traceback (``--debug`` shows it); exit codes:
0 success, 1 failure while working, 2 bad input."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from nnforge.cli import (
    cascade,
    dashboard,
    docs,
    evaluate,
    explain,
    export,
    federate,
    info,
    ledger,
    model,
    moe,
    prune,
    review,
    run,
    runs,
    search,
    serve,
    users,
)
from nnforge.cli._common import STATE, console, setup_logging

__all__ = ["app", "main"]

app = typer.Typer(name="nnforge", help="Make neural networks small, fast, private and accountable.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)


def _version(value: bool) -> None:
    if value:
        from nnforge import __version__

        typer.echo(f"nnforge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks and debug logs.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    STATE["debug"] = debug
    setup_logging(verbose)


app.command("run")(run.run)
app.command("train")(run.train)
app.command("recipes")(info.recipes)
app.command("env")(info.env)
app.command("predict")(model.predict)
app.command("embed")(model.embed)
app.command("report")(model.report)
app.command("evaluate")(evaluate.evaluate)
app.command("export")(export.export)
app.command("explain")(explain.explain)
app.command("docs")(docs.docs)
app.command("promote")(review.promote)
app.command("prune")(prune.prune)
app.command("search")(search.search)
app.command("federate")(federate.federate)
app.command("serve")(serve.serve)
app.command("loadtest")(serve.loadtest)
app.command("cascade")(cascade.cascade)
app.add_typer(info.data_app, name="data")
app.add_typer(ledger.app, name="ledger")
app.add_typer(review.app, name="review")
app.add_typer(dashboard.app, name="dashboard")
app.add_typer(runs.app, name="runs")
app.add_typer(users.app, name="users")
app.add_typer(moe.app, name="moe")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and turns nnforge errors into a message and an exit code."""
    from nnforge.errors import NnforgeError

    # the command line is an application: it may set process-wide defaults the library must not
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        rc = app(args=argv, standalone_mode=False)
    except NnforgeError as exc:
        if STATE["debug"]:
            console.print_exception()
        from rich.markup import escape

        # messages can quote user input (labels, file names): escaped so that it cannot inject markup
        console.print(f"[red bold]error:[/] {escape(str(exc))}", markup=True, highlight=False)
        return exc.exit_code
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except (typer.Abort, KeyboardInterrupt):
        console.print("[red]aborted[/]")
        return 130
    except Exception as exc:  # usage errors (click's, as typer ships them) and unexpected failures
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()  # type: ignore[attr-defined]
            return int(exc.exit_code)  # type: ignore[attr-defined]
        if STATE["debug"]:
            console.print_exception()
        from rich.markup import escape

        console.print(f"[red bold]error:[/] unexpected {type(exc).__name__}: {escape(str(exc))} "
                      "(rerun as `nnforge --debug COMMAND …` for the traceback)")
        return 1
    if rc == 130:  # typer turns Ctrl-C into exit code 130 by itself
        console.print("[red]aborted[/] (interrupted; a running recipe recorded run.failed in the ledger)")
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
