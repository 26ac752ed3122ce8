"""``nnforge dashboard serve``: the web dashboard over the ledger, the runs and the review queue. Each person
logs in with their own name and token (``nnforge users add``); there is no shared dashboard token."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated

import typer

from nnforge.cli._common import console, ledger_location, record_cli

app = typer.Typer(help="Web dashboard: runs, reports, lineage, ledger verification and the review queue.",
                  no_args_is_help=True)

LedgerOpt = Annotated[str | None, typer.Option("--ledger", help="Ledger database (default .nnforge/ledger.db).")]
ActorOpt = Annotated[str | None, typer.Option(hidden=True, help="Deprecated: checked against the authenticated "
                                                                "user (NNFORGE_TOKEN or --token-file).")]
TokenFileOpt = Annotated[Path | None, typer.Option("--token-file", help="File holding your token (default: the "
                                                                       "NNFORGE_TOKEN environment variable); who "
                                                                       "served is recorded as its user.")]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on (loopback only unless --allow-remote).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8765,
    ledger: LedgerOpt = None,
    actor: ActorOpt = None,
    token_file: TokenFileOpt = None,
    runs_dir: Annotated[str, typer.Option(help="Folder of the run folders.")] = "runs",
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Listen on a non-loopback address. The "
                                                                      "dashboard speaks plain HTTP: put it behind "
                                                                      "a TLS proxy first.")] = False,
) -> None:
    """Serve the dashboard; each user logs in with their name and the token from 'nnforge users add'."""
    from nnforge.cli.users import acting_name
    from nnforge.errors import ConfigError, MissingDependencyError
    from nnforge.govern.users import UserStore

    if not _is_loopback(host) and not allow_remote:
        raise ConfigError(f"--host {host!r} is not a loopback address: the dashboard speaks plain HTTP, so the "
                          "tokens and session cookies would cross the network unencrypted, and anyone who can reach "
                          "the port can try tokens. Keep 127.0.0.1 (use an SSH tunnel), or put a TLS proxy in "
                          "front and pass --allow-remote")
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: must be in 1..65535")
    users = UserStore.for_ledger(ledger_location(ledger))
    if not users.users():  # fails now, with the fix, when nobody could log in
        raise ConfigError(f"no users in {users.path}: nobody could log in. Create the first admin with 'nnforge "
                          "users add NAME --role admin' (same --ledger), then serve")
    actor = acting_name(ledger_location(ledger), token_file, actor)
    try:
        import uvicorn

        from nnforge.govern.dashboard.app import create_app
    except ImportError as exc:
        raise MissingDependencyError(f"the dashboard needs FastAPI and uvicorn ({exc.name} is missing): "
                                     "pip install 'nnforge[dashboard]'") from None
    bind = host.strip("[]")  # "[::1]" is how a URL writes ::1; the socket wants the bare address
    # the address served on is a Host header its own pages send (127.0.0.2 was refused by its own server)
    allowed = None if allow_remote else sorted({"127.0.0.1", "localhost", "[::1]", "::1", bind,
                                                f"[{bind}]" if ":" in bind else bind})
    web = create_app(ledger_location(ledger), runs_dir, users.path, allowed_hosts=allowed)
    # who opened the ledger's data to a web server, where and for whom, is itself on the record
    record_cli("dashboard.serve", {"host": host, "port": port, "allow_remote": allow_remote, "runs_dir": runs_dir,
                                   "users_file": str(users.path)}, ledger=ledger, actor=actor)
    from nnforge.ledger import redact_url

    shown = f"[{bind}]" if ":" in bind else bind
    console.print(f"nnforge dashboard on http://{shown}:{port}/ (ledger {redact_url(ledger_location(ledger))}, "
                  f"runs {runs_dir}); Ctrl-C stops it", markup=False)
    uvicorn.run(web, host=bind, port=port, log_level="warning", server_header=False)
