"""``nnforge ledger show|verify|export|keygen|sign|lineage``."""

from __future__ import annotations

from typing import Annotated

import typer

from nnforge.cli._common import existing_ledger, out, print_json, safe

app = typer.Typer(help="Inspect, verify and export the audit ledger.", no_args_is_help=True)

LedgerOpt = Annotated[str | None, typer.Option("--ledger", help="Ledger database (default .nnforge/ledger.db).")]


def _open(location: str | None) -> object:
    from nnforge.ledger import Ledger

    return Ledger.open(existing_ledger(location))


@app.command()
def show(
    ledger: LedgerOpt = None,
    run: Annotated[str | None, typer.Option(help="Only the events of this run id.")] = None,
    kind: Annotated[str | None, typer.Option(help="Only events of this kind (e.g. step.finished).")] = None,
    limit: Annotated[int, typer.Option(help="Show the newest N events (0: all).")] = 30,
    json_: Annotated[bool, typer.Option("--json", help="Print events as JSON.")] = False,
) -> None:
    """List ledger events, newest last (run ids, kinds and actors are shown as plain text, control characters
    escaped: a shared ledger's entries are not trusted to drive your terminal)."""
    from rich.table import Table
    from rich.text import Text

    from nnforge.errors import ConfigError

    if limit < 0:
        raise ConfigError(f"--limit {limit}: give 0 (all events) or a positive number")
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
        table.add_row(str(e.seq), Text(safe(e.time[:19])), Text(safe(e.run)), Text(safe(e.kind)), Text(safe(e.actor)),
                      e.hash[:12])
    out.print(table)


@app.command()
def verify(
    ledger: LedgerOpt = None,
    head: Annotated[str | None, typer.Option(help="A head hash issued earlier (report, signature): it must "
                                                  "still be in the chain.")] = None,
    signed: Annotated[str | None, typer.Option(help="A signed-head JSON file ('nnforge ledger sign --out'): "
                                                    "check its signature and that it is still in the chain.")] = None,
    public_key: Annotated[str | None, typer.Option("--public-key", help="The signer's public key (PEM), "
                                                                         "required with --signed.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Check the hash chain; exit 1 and name the first broken event if anything was changed."""
    from nnforge.errors import ConfigError

    if (signed is None) != (public_key is None):
        raise ConfigError("--signed and --public-key go together: pass the signed-head JSON and the signer's "
                          "public key PEM")
    if signed is not None and public_key is not None:
        from nnforge.ledger import load_signed_head, verify_signed_head

        signed_head = load_signed_head(signed)
        led = _open(ledger)
        check = verify_signed_head(led, signed_head, public_key)  # type: ignore[arg-type]
        if json_:
            print_json(check.to_dict())
        elif check.ok:
            out.print(f"[green]ok[/]: signature valid, event #{signed_head.seq} is the signed head "
                      f"{signed_head.head} ({check.chain.events if check.chain else '?'} events now)")
        else:
            out.print(f"[red]BROKEN[/]: {check.reason}")
        if not check.ok:
            raise typer.Exit(1)
        if head is None:
            return
    if head is not None:
        import re

        head = head.strip().lower()
        if not re.fullmatch(r"[0-9a-f]{64}", head):
            raise ConfigError("--head: expected a full head hash, 64 hex digits (reports, 'ledger verify' and "
                              "'ledger show --json' print it; the table's 12 digits are not enough)")
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
def keygen(
    out_dir: Annotated[str, typer.Option("--out", help="Folder for ledger_ed25519.pem (private, 0600) and "
                                                       "ledger_ed25519.pub.pem (public).")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing key files.")] = False,
) -> None:
    """Create an Ed25519 key pair for signing ledger heads."""
    from nnforge.ledger import generate_keypair

    priv, pub = generate_keypair(out_dir, overwrite=force)
    out.print(f"private key {priv} (mode 0600: keep it away from the ledger's machine)\npublic key  {pub}")


@app.command()
def sign(
    key: Annotated[str, typer.Option("--key", help="Private key PEM from 'nnforge ledger keygen'.")],
    ledger: LedgerOpt = None,
    out_path: Annotated[str | None, typer.Option("--out", help="Also write the signed head to this JSON "
                                                               "file.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the signed head as JSON.")] = False,
) -> None:
    """Sign the current head and record the signature in the ledger (event ledger.signed)."""
    from nnforge.ledger import sign_head, write_signed_head

    led = _open(ledger)
    signed = sign_head(led, key)  # type: ignore[arg-type]
    if out_path:
        write_signed_head(signed, out_path)
    if json_:
        print_json(signed.to_dict())
    else:
        where = f", written to {out_path}" if out_path else ""
        out.print(f"signed event #{signed.seq}, head {signed.head}, key {signed.signer}{where}")


@app.command()
def export(
    path: Annotated[str, typer.Argument(help="Output JSONL file (one event per line, with hashes).")],
    ledger: LedgerOpt = None,
) -> None:
    """Export every event to JSONL (for archiving or offline verification)."""
    led = _open(ledger)
    n = led.export_jsonl(path)  # type: ignore[attr-defined]
    out.print(f"wrote {n} events to {path}")


_KIND_STYLE = {"run": "bold", "data": "cyan", "model": "cyan", "step": "blue", "artifact": "magenta",
               "evaluation": "green", "suite": "green", "same-artifact": "yellow", "used-by": "yellow",
               "approval": "red"}


@app.command()
def lineage(
    artifact: Annotated[str, typer.Argument(help="A file path (hashed), a sha256 or unique prefix (8+ hex digits), "
                                                 "or RUN_ID:NAME such as 20261128-053421-148a00:model:int8.")],
    ledger: LedgerOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the chain as JSON.")] = False,
) -> None:
    """Show the chain that produced an artifact: data, base model, steps, evaluations, approval (exit 2 when the
    artifact is unknown or a prefix is ambiguous)."""
    from rich.markup import escape
    from rich.tree import Tree

    from nnforge.ledger import lineage as build_lineage

    led = _open(ledger)
    lin = build_lineage(led, artifact)  # type: ignore[arg-type]
    if json_:
        print_json(lin.to_dict())
        return
    a = lin.artifact
    tree = Tree(f"[bold]{escape(safe(str(a['name'])))}[/] of run {escape(safe(str(a['run'])))}  sha256 {a['sha256']}"
                f"  (event #{a['seq']})")
    for node in lin.nodes:
        style = _KIND_STYLE.get(node.kind, "")
        seq = f"#{node.seq}" if node.seq is not None else "—"
        tree.add(f"{seq:>5} [{style}]{escape(safe(node.kind))}[/]  {escape(safe(node.label))}")
    out.print(tree, soft_wrap=False)
