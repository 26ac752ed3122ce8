"""``nnforge users add|list|remove|token|audit``: named users with roles, and how every command that decides finds
out who is acting.

A command that decides (``review decide``, ``promote``, ``users …``) reads the user's token from the file named
by ``--token-file`` or else from the environment variable ``NNFORGE_TOKEN`` — never from a plain argument, which
``ps`` would show to everyone on the machine. A user with a registered key also passes their private key
(``--key-file`` or ``NNFORGE_KEY``) and the decision is signed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import typer

from nnforge.cli._common import console, ledger_location, out, print_json, safe

app = typer.Typer(help="Named users with roles (caller, reviewer, approver, admin) and their tokens.", no_args_is_help=True)

TOKEN_ENV, KEY_ENV = "NNFORGE_TOKEN", "NNFORGE_KEY"
TokenFileOpt = Annotated[Path | None, typer.Option(
    "--token-file", help=f"File holding your token (default: the {TOKEN_ENV} environment variable).")]
KeyFileOpt = Annotated[Path | None, typer.Option(
    "--key-file", help=f"Your Ed25519 private key, to sign the decision (default: {KEY_ENV}); required when you "
                       "have a registered key.")]
LedgerOpt = Annotated[str | None, typer.Option("--ledger", help="Ledger database (default .nnforge/ledger.db); "
                                                                "the users live in users.json beside it.")]


def read_token(token_file: Path | None) -> str | None:
    """The token from ``token_file`` (first line) or ``NNFORGE_TOKEN``; ``None`` when neither is there."""
    from nnforge.errors import ConfigError

    if token_file is not None:
        try:
            lines = token_file.read_text(encoding="utf-8").strip().splitlines()
            mode = token_file.stat().st_mode & 0o777
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"--token-file {token_file}: cannot read it ({exc})") from None
        if mode & 0o077:  # like ssh with a private key: say so, the token is as good as a password
            console.print(f"warning: {token_file} can be read by other users (mode {mode:o}); 'chmod 600' it",
                          markup=False)
        return lines[0].strip() if lines else None
    return os.environ.get(TOKEN_ENV) or None


def key_file(given: Path | None) -> Path | None:
    env = os.environ.get(KEY_ENV)
    return given if given is not None else Path(env) if env else None


def current_user(ledger: str, token_file: Path | None, action: str, claimed: str | None = None,
                 option: str = "--reviewer") -> Any:
    """The authenticated user allowed to do ``action`` (exit 2 otherwise, before anything is written).
    ``claimed`` is a deprecated ``--reviewer``/``--approver`` name: it must be the authenticated user's."""
    from nnforge.govern.users import AccessDenied, UserStore, require

    user = require(UserStore.for_ledger(ledger).authenticate(read_token(token_file)), action)
    if claimed is not None and claimed.strip() != user.name:
        raise AccessDenied(f"{option} {claimed!r} is not the authenticated user {user.name!r} (the token decides "
                           f"who acts; {option} is deprecated and only checked)")
    return user


def acting_name(ledger: str, token_file: Path | None, claimed: str | None) -> str | None:
    """Who a command that decides nothing (queueing, serving) is recorded as: the token's user when a token is
    given, else ``None`` (the OS user). ``--actor`` is deprecated: it needs a token and must name its user."""
    from nnforge.govern.users import AccessDenied, UserStore

    token = read_token(token_file)
    if token is None:
        if claimed is not None:
            raise AccessDenied(f"--actor {claimed!r} is deprecated and is not taken on trust: set NNFORGE_TOKEN (or "
                               "--token-file) and the token's user is recorded")
        return None
    user = UserStore.for_ledger(ledger).authenticate(token)
    if claimed is not None and claimed.strip() != user.name:
        raise AccessDenied(f"--actor {claimed!r} is not the authenticated user {user.name!r}")
    return user.name


def _admin(ledger: str, token_file: Path | None, *, bootstrap_ok: bool) -> Any:
    """The authenticated admin, or ``None`` for the first admin of an empty store."""
    from nnforge.govern.users import UserStore

    token = read_token(token_file)
    if token is None and bootstrap_ok and not UserStore.for_ledger(ledger).users():
        return None
    return current_user(ledger, token_file, "manage users")


def _print_token(token: str, name: str) -> None:
    console.print(f"token of {safe(name)} (shown once; only its salted hash is stored). Give it to {safe(name)}, "
                  f"who keeps it in a file (--token-file) or in {TOKEN_ENV}:", markup=False)
    out.print(token, markup=False, highlight=False)


@app.command()
def add(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, '_', '.', '-').")],
    role: Annotated[str, typer.Option("--role", help="caller (asks a served model), reviewer, approver or admin.")],
    key: Annotated[bool, typer.Option("--key", help="Also create an Ed25519 key pair: the private key goes to "
                                                    "--key-dir, the public key into the user store.")] = False,
    key_dir: Annotated[Path | None, typer.Option("--key-dir", help="Where --key writes the pair (default "
                                                                   "~/.nnforge/keys/NAME).")] = None,
    public_key: Annotated[Path | None, typer.Option("--public-key", help="Register this PEM public key (made "
                                                                        "with 'nnforge ledger keygen').")] = None,
    expires_days: Annotated[float | None, typer.Option("--expires-days", help="The token expires after this "
                                                                             "many days.")] = None,
    token_file: TokenFileOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Add a user (an admin's action; the first admin of an empty store needs no token). Prints the token once."""
    from nnforge.errors import ConfigError
    from nnforge.govern.users import UserStore
    from nnforge.ledger import Ledger
    from nnforge.ledger.signing import generate_keypair, public_key_pem

    if key and public_key is not None:
        raise ConfigError("--key creates a key pair and --public-key registers one: give one of them")
    loc = ledger_location(ledger)
    by = _admin(loc, token_file, bootstrap_ok=True)
    if any(u.name == name for u in UserStore.for_ledger(loc).users()):  # before any key file is written
        raise ConfigError(f"user {name!r} already exists; remove it first or rotate its token with "
                          f"'nnforge users token {name}'")
    pem = public_key_pem(public_key) if public_key is not None else None
    priv = None
    if key:
        target = key_dir or Path.home() / ".nnforge" / "keys" / name
        priv, pub = generate_keypair(target)
        pem = public_key_pem(pub)
    led = Ledger.open(loc)
    try:
        user, token = UserStore.for_ledger(loc).add(name, role, by=by, ledger=led, public_key=pem,
                                                    expires_days=expires_days)
    finally:
        led.close()
    console.print(f"added {safe(user.name)} as {user.role}" + (f", key {user.key_fingerprint}" if pem else ""),
                  markup=False)
    if priv is not None:
        console.print(f"private key: {priv} (it stays with {safe(name)}: sign with --key-file or {KEY_ENV})",
                      markup=False)
    _print_token(token, name)


@app.command("list")
def list_(
    ledger: LedgerOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the users as JSON.")] = False,
) -> None:
    """List users, their roles, keys and token expiry (no secret is stored to show)."""
    from rich.table import Table
    from rich.text import Text

    from nnforge.govern.users import UserStore

    users = UserStore.for_ledger(ledger_location(ledger)).users()
    if json_:
        print_json([u.to_dict() for u in users])
        return
    table = Table(show_header=True)
    for col in ("user", "role", "key", "token expires"):
        table.add_column(col)
    for u in users:
        table.add_row(Text(safe(u.name)), u.role, Text(u.key_fingerprint or "—"), Text(u.expires or "never"))
    out.print(table)


@app.command()
def remove(
    name: Annotated[str, typer.Argument(help="User to remove.")],
    token_file: TokenFileOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Remove a user (an admin's action, recorded); their token stops working at once."""
    from nnforge.govern.users import UserStore
    from nnforge.ledger import Ledger

    loc = ledger_location(ledger)
    by = _admin(loc, token_file, bootstrap_ok=False)
    led = Ledger.open(loc)
    try:
        gone = UserStore.for_ledger(loc).remove(name, by=by, ledger=led)
    finally:
        led.close()
    console.print(f"removed {safe(gone.name)} ({gone.role})", markup=False)


@app.command()
def token(
    name: Annotated[str, typer.Argument(help="User whose token is replaced.")],
    token_file: TokenFileOpt = None,
    ledger: LedgerOpt = None,
) -> None:
    """Replace a user's token (an admin, or the user themself); the old one stops working at once and every
    dashboard session opened with it ends. Prints the new token once."""
    from nnforge.govern.users import UserStore
    from nnforge.ledger import Ledger

    loc = ledger_location(ledger)
    store = UserStore.for_ledger(loc)
    by = store.authenticate(read_token(token_file))
    led = Ledger.open(loc)
    try:
        new = store.rotate(name, by=by, ledger=led)
    finally:
        led.close()
    _print_token(new, name)


@app.command()
def audit(
    ledger: LedgerOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print every decision and the counts as JSON.")] = False,
) -> None:
    """Check every decision in the ledger (reviews, promotions, revocations): who made it, how they logged in, and
    whether its signature verifies against their registered key. Exit 1 when a signature is bad."""
    from rich.table import Table
    from rich.text import Text

    from nnforge.cli._common import existing_ledger
    from nnforge.govern.users import UserStore, audit_decisions
    from nnforge.ledger import Ledger

    loc = existing_ledger(ledger)
    led = Ledger.open(loc)
    try:
        report = audit_decisions(led, UserStore.for_ledger(loc))
    finally:
        led.close()
    if json_:
        print_json(report)
    else:
        table = Table(show_header=True)
        for col in ("#", "kind", "run", "user", "role", "via", "signature"):
            table.add_column(col)
        for r in report["events"]:
            table.add_row(str(r["seq"]), r["kind"], Text(safe(r["run"])), Text(safe(r["user"] or "—")),
                          r["role"] or "—", r["via"] or "—", r["signature"])
        out.print(table)
        out.print(f"{report['decisions']} decisions: {report['signed']} signed, {report['unsigned']} unsigned, "
                  f"{report['none']} without an authenticated user, {report['bad']} with a bad signature",
                  markup=False)
    if report["bad"]:  # like a broken chain in 'nnforge ledger verify': the check ran and found tampering
        bad = [str(r["seq"]) for r in report["events"] if r["signature"] == "bad"]
        console.print(f"error: decision event(s) #{', #'.join(bad)} in {loc} do not verify against their user's "
                      "registered key: edited after they were made, or the key was replaced", markup=False)
        raise typer.Exit(1)
