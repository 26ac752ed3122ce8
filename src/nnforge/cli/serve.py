"""``nnforge serve RUN`` (a finished run's model over HTTP, guarded and overseen) and ``nnforge loadtest URL``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nnforge.cli._common import console, print_json, read_text_lines, run_ledger
from nnforge.cli.dashboard import _is_loopback


def serve(
    run: Annotated[str, typer.Argument(help="Run folder or run id.")],
    variant: Annotated[str | None, typer.Option(help="Variant to serve (default: the run's final one).")] = None,
    backend: Annotated[str, typer.Option(help="auto (the fastest measured), torch, native or onnx.")] = "auto",
    host: Annotated[str, typer.Option(help="Address to listen on (loopback unless --allow-remote).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Inputs per model call (dynamic batching).")] = 32,
    max_wait_ms: Annotated[float, typer.Option(help="How long a lone input waits for others.")] = 2.0,
    min_confidence: Annotated[float, typer.Option(help="Below it an answer is unsure.")] = 0.5,
    unsure: Annotated[str, typer.Option(help="An unsure answer: review (withheld, queued), flag (answered, "
                                             "queued) or answer.")] = "flag",
    ood: Annotated[str, typer.Option(help="An input the run's OOD guard flags: review, flag or off.")] = "review",
    record_inputs: Annotated[bool, typer.Option("--record-inputs", help="Store raw inputs in the ledger (the "
                                                "recipe's metadata must allow it).")] = False,
    ledger: Annotated[str | None, typer.Option(help="Ledger for the decisions (default: the run's).")] = None,
    runs_dir: Annotated[str, typer.Option(help="Folder where run ids are looked up.")] = "runs",
    token_file: Annotated[Path | None, typer.Option("--token-file", help="Your token (default NNFORGE_TOKEN): "
                                                    "who started the server is recorded.")] = None,
    allow_remote: Annotated[bool, typer.Option("--allow-remote", help="Listen on a non-loopback address (plain "
                                                                      "HTTP: put a TLS proxy in front).")] = False,
    allow_modified: Annotated[bool, typer.Option("--allow-modified", help="Serve even if the run's files differ "
                                                 "from the ledger's record (recorded).")] = False,
) -> None:
    """Serve a finished run's model: /predict (dynamic batching, OOD guard, confidence routing to review),
    /health, /metrics, /control/halt|resume and /review for overseers. Callers need a token
    ('nnforge users add NAME --role caller')."""
    from nnforge.cli.users import acting_name
    from nnforge.deploy.serve import ServeConfig, create_app, run_server
    from nnforge.errors import ConfigError
    from nnforge.govern.users import UserStore
    from nnforge.recipes.runs import find_run
    from nnforge.recipes.serve_run import serve_run

    if not _is_loopback(host) and not allow_remote:
        raise ConfigError(f"--host {host!r} is not a loopback address: the server speaks plain HTTP and tokens "
                          "would cross the network unencrypted. Keep 127.0.0.1, or put a TLS proxy in front and "
                          "pass --allow-remote")
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port}: must be in 1..65535")
    cfg = ServeConfig(host=host.strip("[]"), port=port, max_batch=max_batch, max_wait_ms=max_wait_ms,
                      min_confidence=min_confidence, unsure=unsure, ood=ood,  # type: ignore[arg-type]
                      record_inputs=record_inputs)
    loc = run_ledger(ledger, find_run(run, runs_dir), create=True)
    users = UserStore.for_ledger(loc)
    if not any(u.can("predict") for u in users.users()):
        raise ConfigError(f"no users in {users.path}: nobody could call the server. Add one with 'nnforge users "
                          f"add NAME --role caller --ledger {loc}'")
    operator = acting_name(loc, token_file, None)
    service = serve_run(run, cfg, variant=variant, backend=backend, runs_dir=runs_dir, ledger=loc,
                        allow_modified=allow_modified, actor=operator)
    service.operator = operator
    console.print(f"nnforge serve: run {service.run}, variant {service.variant}, backend {service.backend.name} "
                  f"on http://{host}:{port}/ (ledger {loc}); Ctrl-C stops it", markup=False)
    run_server(create_app(service, users), cfg)


def loadtest(
    url: Annotated[str, typer.Argument(help="The server, e.g. http://127.0.0.1:8000 (this machine only).")],
    file: Annotated[Path, typer.Option("--file", "-f", help="Inputs: one text per line.")],
    clients: Annotated[int, typer.Option(help="Concurrent clients (1..256).")] = 16,
    seconds: Annotated[float, typer.Option(help="How long (at most 600).")] = 10.0,
    token_file: Annotated[Path | None, typer.Option("--token-file", help="A caller's token (default "
                                                    "NNFORGE_TOKEN).")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Load-test a local server: N closed-loop clients for T seconds; throughput, p50/p99 latency, errors."""
    from nnforge.cli.users import read_token
    from nnforge.deploy.serve.loadtest import load_test

    result = load_test(url, read_text_lines(file), token=read_token(token_file), clients=clients, seconds=seconds)
    if json_:
        print_json(result.to_dict())
        return
    console.print(f"{result.clients} clients, {result.seconds:.1f} s: {result.ok} answered ({result.rps:.1f}/s), "
                  f"p50 {result.p50_ms:.1f} ms, p99 {result.p99_ms:.1f} ms, errors {result.errors or 0}",
                  markup=False)

