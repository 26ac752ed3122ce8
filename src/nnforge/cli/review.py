"""``nnforge review enqueue|list|show|decide|stats`` (human oversight) and ``nnforge promote`` (the gate).

Review items hold untrusted text (model inputs, reviewers' notes): it is printed with rich markup off and
control characters escaped, so neither ``[red]…`` markup nor terminal escape sequences take effect.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from nnforge.cli import users as users_cli
from nnforge.cli._common import existing_ledger, ledger_location, out, print_json, read_text_lines, run_ledger, safe
from nnforge.cli.users import KeyFileOpt, TokenFileOpt, current_user

app = typer.Typer(help="Review queue: low-confidence, out-of-distribution and audit-sampled outputs.",
                  no_args_is_help=True)

LedgerOpt = Annotated[str | None, typer.Option("--ledger", help="Ledger database (default .nnforge/ledger.db).")]


def _queue(location: str | None, actor: str | None = None, *, create: bool = False) -> Any:
    """The review queue in the ledger; only ``enqueue`` (which writes new records) may create the ledger."""
    from nnforge.govern.review import ReviewQueue

    return ReviewQueue.open(ledger_location(location) if create else existing_ledger(location), actor=actor)


def _run_labels(run_dir: Path) -> list[str] | None:
    from nnforge import runs
    from nnforge.errors import NnforgeError

    try:
        labels = runs.read_config(run_dir).get("label_names")
    except NnforgeError:
        return None
    return [str(x) for x in labels] if labels else None


@app.command()
def enqueue(
    run: Annotated[str, typer.Argument(help="Run folder or run id.")],
    file: Annotated[Path, typer.Option("--file", help="Texts to predict, one per line (empty lines skipped).")],
    variant: Annotated[str | None, typer.Option(help="Model variant (default: the run's final one).")] = None,
    min_confidence: Annotated[float, typer.Option("--min-confidence", help="Review outputs below this.")] = 0.5,
    audit_rate: Annotated[float, typer.Option("--audit-rate", help="Fraction of the rest sampled for audit.")] = 0.02,
    seed: Annotated[int, typer.Option(help="Seed of the audit sample.")] = 0,
    ood: Annotated[bool, typer.Option("--ood", help="Also review inputs the run's ood-guard/ flags.")] = False,
    runs_dir: Annotated[str, typer.Option(help="Folder where run ids are looked up.")] = "runs",
    ledger: LedgerOpt = None,
    token_file: TokenFileOpt = None,
    actor: Annotated[str | None, typer.Option(hidden=True, help="Deprecated: checked against the authenticated "
                                                                "user.")] = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the queued items as JSON.")] = False,
) -> None:
    """Predict the texts with a run's model, apply the review rules and queue what needs a human. Recorded as the
    user whose token is in NNFORGE_TOKEN (or --token-file) when there is one, else as the OS user (a job)."""
    from nnforge.errors import ConfigError, DataError
    from nnforge.govern.review import check_review_rates, review_rules
    from nnforge.recipes.runs import load_run

    check_review_rates(min_confidence, audit_rate, ("--min-confidence", "--audit-rate"))  # before any model runs
    texts = read_text_lines(file)
    if not texts:
        raise DataError(f"{file}: no texts (every line is empty)")
    r = load_run(run, runs_dir)
    preds = r.predict(texts, variant)
    name = variant or r.config.get("final_variant")
    flags = None
    if ood:
        from nnforge.explain import OODGuard, TextFeatures

        guard_dir = r.path / "ood-guard"
        if not (guard_dir / "guard.json").is_file():
            raise ConfigError(f"{r.path}: --ood needs a saved guard in {guard_dir} (none there)")
        guard = OODGuard.load(guard_dir)
        # the guard was calibrated on one variant's features: featurize with that variant when the run has it
        guard_variant = guard.metadata.get("model")
        guard.featurizer = TextFeatures(r.model(guard_variant if guard_variant in r.variants else variant))
        flags = [bool(x) for x in guard(texts).is_ood.tolist()]
    picks = review_rules(preds, min_confidence=min_confidence, ood_flags=flags, audit_rate=audit_rate, seed=seed)
    loc = run_ledger(ledger, r.path, create=True)
    q = _queue(loc, users_cli.acting_name(loc, token_file, actor), create=True)
    try:
        items = [q.enqueue(run=r.run_id, variant=name, text=preds[p.index]["text"], label=preds[p.index]["label"],
                           confidence=preds[p.index]["confidence"], reason=p.reason) for p in picks]
    finally:
        q.close()
    if json_:
        print_json([i.to_dict() for i in items])
        return
    counts = {reason: sum(i.reason == reason for i in items) for reason in ("low_confidence", "ood", "audit")}
    out.print(f"{len(texts)} texts predicted, {len(items)} queued for review "
              + ", ".join(f"{k}: {v}" for k, v in counts.items()), markup=False)


@app.command("list")
def list_(
    status: Annotated[str | None, typer.Option(help="Only items with this status: open, approved, overridden, "
                                                    "out_of_scope, escalated.")] = None,
    ledger: LedgerOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print items as JSON.")] = False,
) -> None:
    """List review items, oldest first."""
    from rich.table import Table
    from rich.text import Text

    q = _queue(ledger)
    try:
        items = q.list(status)
    finally:
        q.close()
    if json_:
        print_json([i.to_dict() for i in items])
        return
    table = Table(show_header=True)
    for col in ("id", "created (UTC)", "run", "reason", "label", "conf", "status", "reviewer", "input"):
        table.add_column(col)
    for i in items:  # Text() cells: never parsed as markup
        snippet = safe(i.input_text.replace("\n", " "))
        table.add_row(str(i.id), Text(safe(i.created[:19])), Text(safe(i.run)), Text(safe(i.reason)),
                      Text(safe(i.label)), f"{i.confidence:.2f}", Text(safe(i.status)), Text(safe(i.reviewer)), Text(snippet[:60] + ("…" if len(snippet) > 60 else "")))
    out.print(table)


@app.command()
def show(
    item_id: Annotated[int, typer.Argument(metavar="ID", help="Review item id.")],
    ledger: LedgerOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the item as JSON.")] = False,
) -> None:
    """Show one review item in full (exit 2 for an unknown id)."""
    q = _queue(ledger)
    try:
        item = q.get(item_id)
    finally:
        q.close()
    if json_:
        print_json(item.to_dict())
        return
    lines = [f"item {item.id}  ({safe(item.status)})", f"run       {safe(item.run)}  variant {safe(item.variant)}",
             f"created   {safe(item.created)}", f"reason    {safe(item.reason)}",
             f"output    {safe(item.label)}  confidence {item.confidence:.4f}",
             f"input     sha256 {item.input_sha256}", safe(item.input_text)]
    if item.status != "open":
        lines += [f"decided   {safe(item.decided)} by {safe(item.reviewer)} after {item.decision_seconds:.1f} s",
                  f"final     {safe(item.final_label)}" + (" (override)" if item.override_label else ""),
                  f"note      {safe(item.note)}"]
    out.print("\n".join(lines), markup=False, highlight=False)


@app.command()
def decide(
    item_id: Annotated[int, typer.Argument(metavar="ID", help="Review item id.")],
    approve: Annotated[bool, typer.Option("--approve", help="The model's output stands.")] = False,
    override: Annotated[str | None, typer.Option("--override", help="Replace the output with this label.")] = None,
    out_of_scope: Annotated[bool, typer.Option("--out-of-scope", help="The input is outside what the model is "
                                                                      "for (no label applies).")] = False,
    escalate: Annotated[bool, typer.Option("--escalate", help="Pass the item to an approver, who decides it.")] = False,
    note: Annotated[str, typer.Option("--note", help="Why (stored verbatim, shown escaped).")] = "",
    token_file: TokenFileOpt = None,
    key_file: KeyFileOpt = None,
    reviewer: Annotated[str | None, typer.Option(hidden=True, help="Deprecated: checked against the "
                                                                   "authenticated user.")] = None,
    runs_dir: Annotated[str, typer.Option(help="Folder where the item's run is looked up (label check).")] = "runs",
    ledger: LedgerOpt = None,
) -> None:
    """Decide one item, once, as the user whose token is in NNFORGE_TOKEN (or --token-file): approve, override,
    mark out of scope, or escalate to an approver. The decision, the authenticated user (and a signature when the
    user has a key) and the timing go to the ledger. Exit 2 for no or a bad token, a role too low, an unknown id,
    a second decision, not exactly one decision, or a label the run does not have."""
    from nnforge.errors import ConfigError

    chosen = [d for d, on in (("approve", approve), ("override", override is not None),
                              ("out-of-scope", out_of_scope), ("escalate", escalate)) if on]
    if len(chosen) != 1:
        raise ConfigError("review decide: give exactly one of --approve, --override LABEL, --out-of-scope or "
                          "--escalate")
    loc = existing_ledger(ledger)
    user = current_user(loc, token_file, "review", reviewer)
    q = _queue(loc)
    try:
        item = q.get(item_id)
        labels = None
        if override is not None:
            from nnforge.recipes.runs import find_run

            try:
                labels = _run_labels(find_run(item.run, runs_dir))
            except ConfigError:
                labels = None
            if labels is None:
                raise ConfigError(f"review decide: cannot check --override {override!r}: run {item.run} (its "
                                  f"config.json with label_names) is not under {runs_dir}/; pass --runs-dir")
        done = q.decide(item_id, reviewer=user, decision=chosen[0], override_label=override, note=note,
                        allowed_labels=labels, key_file=users_cli.key_file(key_file))
    finally:
        q.close()
    out.print(f"item {done.id} {done.status} by {safe(done.reviewer)}: {safe(done.final_label)} "
              f"({done.decision_seconds:.1f} s after enqueue)", markup=False, highlight=False)


@app.command()
def stats(
    ledger: LedgerOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the statistics as JSON.")] = False,
) -> None:
    """Per reviewer and per reason: items, decisions, approval rate, median decision time."""
    from rich.table import Table
    from rich.text import Text

    q = _queue(ledger)
    try:
        s = q.stats()
    finally:
        q.close()
    if json_:
        print_json(s)
        return

    def fmt(x: float | None, spec: str) -> str:
        return "—" if x is None else format(x, spec)

    table = Table(show_header=True)
    for col in ("group", "items", "open", "approved", "overridden", "out of scope", "escalated", "approval rate",
                "median s"):
        table.add_column(col)
    rows = [("total", s["total"])] + [(f"reviewer {k}", v) for k, v in s["by_reviewer"].items()] + [
        (f"reason {k}", v) for k, v in s["by_reason"].items()]
    for name, v in rows:
        table.add_row(Text(safe(name)), str(v["items"]), str(v["open"]), str(v["approved"]), str(v["overridden"]),
                      str(v["out_of_scope"]), str(v["escalated"]), fmt(v["approval_rate"], ".0%"),
                      fmt(v["median_decision_seconds"], ".1f"))
    out.print(table)


def promote(
    run: Annotated[str, typer.Argument(help="Run folder or run id.")],
    to: Annotated[str, typer.Option("--to", help="Stage: production or staging.")] = "production",
    suite: Annotated[str | None, typer.Option(help="Require this suite's verdict, as the ledger recorded it for the "
                                                   "promoted variant (its newest suite.evaluated event), to pass; "
                                                   "default: every suite the ledger recorded for that variant. "
                                                   "A result file in the run folder that differs from the recorded "
                                                   "one is refused; deleting one changes nothing.")] = None,
    variant: Annotated[str | None, typer.Option(help="Model variant (default: the run's final one).")] = None,
    revoke: Annotated[bool, typer.Option("--revoke", help="Revoke the run's standing promotion instead.")] = False,
    reason: Annotated[str | None, typer.Option(help="Why the promotion is revoked (with --revoke).")] = None,
    token_file: TokenFileOpt = None,
    key_file: KeyFileOpt = None,
    approver: Annotated[str | None, typer.Option(hidden=True, help="Deprecated: checked against the "
                                                                   "authenticated user.")] = None,
    runs_dir: Annotated[str, typer.Option(help="Folder where run ids are looked up.")] = "runs",
    ledger: LedgerOpt = None,
    json_: Annotated[bool, typer.Option("--json", help="Print the ledger event as JSON.")] = False,
) -> None:
    """Promote a run's model as the user whose token is in NNFORGE_TOKEN (or --token-file), an approver or admin.

    The ledger must verify and have recorded the run and the variant's weights; every regression suite the ledger
    recorded for the variant must have passed (exit 1 names a failed one); a variant no suite evaluated is
    refused when other variants' suites exist, and a run with no suite at all is promoted with no_suite recorded.
    With --revoke, record that the standing promotion is withdrawn
    (nothing is deleted). Exit 2 for no or a bad token, a reviewer's token, and bad input."""
    from nnforge.errors import ConfigError
    from nnforge.govern import promotion as gate
    from nnforge.ledger import Ledger
    from nnforge.recipes.runs import find_run

    if reason is not None and not revoke:
        raise ConfigError("--reason goes with --revoke (a promotion records its suites and approver, not a reason)")
    folder = find_run(run, runs_dir)
    loc = run_ledger(ledger, folder)
    user = current_user(loc, token_file, "revoke" if revoke else "promote", approver, "--approver")
    led = Ledger.open(loc)
    try:
        if revoke:
            ev = gate.revoke(led, folder, approver=user, reason=reason or "", key_file=users_cli.key_file(key_file))
        else:
            ev = gate.promote(led, folder, approver=user, to=to, variant=variant, suite=suite,
                              key_file=users_cli.key_file(key_file))
    finally:
        led.close()
    signed = " (signed)" if ev.data.get("signature") else ""
    if json_:
        print_json(ev.to_dict())
    elif revoke:
        out.print(f"revoked promotion #{ev.data['promotion_seq']} of run {safe(ev.run)} ({safe(ev.data['variant'])}) by "
                  f"{safe(ev.data['approver'])}{signed}: event #{ev.seq}", markup=False)
    else:
        suites = ", ".join(f"{safe(s['name'])} passed" for s in ev.data["suites"]) or "no regression suite defined"
        out.print(f"promoted run {safe(ev.run)} {safe(ev.data['variant'])} (sha256 {ev.data['weights_sha256'][:12]}…) to "
                  f"{ev.data['stage']}, approved by {safe(ev.data['approver'])}{signed}; {suites}: event #{ev.seq}",
                  markup=False)
