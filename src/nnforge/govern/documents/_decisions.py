"""Sections filled from what happened to the run after (and around) its steps: its final state, the promotion
gate's decisions, review outcomes, the OOD guard as measured, and what the provider declared in the recipe's
``metadata`` (users, out-of-scope uses, oversight, post-market monitoring)."""


from __future__ import annotations

from collections import Counter
from typing import Any

from nnforge.govern.documents._facts import _Facts, _metadata, _text_fact
from nnforge.govern.documents._model import Section, Span
from nnforge.ledger import Event

GUARD_RELIABLE_AUROC = 0.8
"""Below this AUROC on an evaluation set, the documents say the guard does not separate that set's inputs."""


def run_state(facts: _Facts) -> tuple[str, str]:
    """The run's final state (``finished``, ``failed``, ``interrupted``, ``running``) and, when it did not
    finish, one sentence on where and why, from its ``run.failed`` / ``step.failed`` events."""
    from nnforge.govern.integrity import run_status

    status = run_status(facts.events, facts.config)
    if status == "finished":
        return status, ""
    failed = facts.first("run.failed")
    step = next((e for e in reversed(facts.events) if e.kind == "step.failed"), None)
    done = [str(e.data.get("step")) for e in facts.all("step.finished")]
    where = f" in step {step.data.get('index', '?')} ({step.data.get('step')})" if step is not None else ""
    why = f": {str(failed.data.get('error', ''))[:300]} (ledger event #{failed.seq})" if failed is not None else \
        " (no run.finished or run.failed event: the run is still going, or its process was killed)"
    steps = ", ".join(done) if done else "none"
    said = {"failed": "FAILED", "interrupted": "was INTERRUPTED"}.get(status, "has NOT FINISHED")
    return status, f"This run {said}{where}{why}. Steps that finished: {steps}. The model it left " \
                   "did not complete its recipe: do not deploy it on the strength of this document."


def _cited_list(facts: _Facts, values: list[Any], event: Event | None) -> list[list[Span | str]]:
    return [[_text_fact(facts, v, event)] for v in values]


def intended_users(facts: _Facts, sec: Section) -> None:
    """Intended users and out-of-scope uses as the recipe declared them, else what is missing."""
    meta, rev = _metadata(facts)
    if meta.get("intended_users"):
        sec.para("Intended users (as declared in the recipe):")
        sec.bullets(_cited_list(facts, list(meta["intended_users"]), rev))
    if meta.get("out_of_scope_uses"):
        sec.para("Out-of-scope uses (as declared in the recipe): the system must not be used for")
        sec.bullets(_cited_list(facts, list(meta["out_of_scope_uses"]), rev))
    missing = [what for key, what in (("intended_users", "intended users"), ("out_of_scope_uses", "out-of-scope uses"))
               if not meta.get(key)]
    if missing:
        sec.todo(f"{' and '.join(missing)} (recipe metadata: {', '.join(k for k in ('intended_users', 'out_of_scope_uses') if not meta.get(k))}); "
                 "the persons or groups the system is used on")


def licence(facts: _Facts, sec: Section) -> None:
    meta, rev = _metadata(facts)
    if meta.get("licence"):
        sec.para("Licence: ", _text_fact(facts, meta["licence"], rev), ".")
        sec.todo("model version naming and citation")
    else:
        sec.todo("model version naming, licence (recipe metadata: licence), citation, and where to send questions")


def _guard_detector(facts: _Facts) -> str:
    start = facts.first("step.started", "evaluate")
    cfg = (start.data.get("config") or {}) if start is not None else {}
    return str(cfg.get("ood_guard") or "knn")


def guard(facts: _Facts, sec: Section) -> bool:
    """The OOD guard saved with the run, with its measured AUROC on each evaluation set next to any claim about
    what it can do."""
    written = [e for e in facts.all("artifact.written") if str(e.data.get("name", "")).startswith("ood-guard")]
    if not written:
        return False
    name = _guard_detector(facts)
    step = facts.step_event("evaluate")
    ood = ((step.data.get("details") or {}).get("ood")) if step is not None else None
    row = next((d for d in (ood or {}).get("detectors", []) if d.get("name") == name), None)
    sets = list((ood or {}).get("sets", []))
    intro: list[Span | str] = ["An out-of-distribution guard (detector ", name, ") was saved with the run (",
                               _text_fact(facts, str(written[0].data.get("path", "")).split("/")[0], written[0]), ")"]
    if row is None or step is None or not sets:
        sec.para(*intro, "; no measurement of how well it separates unfamiliar inputs was recorded, so nothing is "
                         "claimed about it.")
        return True
    aurocs = {s: (row.get(s) or {}).get("auroc") for s in sets}
    parts: list[Span | str] = [*intro, ". Measured AUROC (1.0 separates perfectly, 0.5 is chance): "]
    for i, s in enumerate(sets):
        parts += [", " if i else "", f"{s} ", facts.cite(step, aurocs[s])]
    parts += ["; it accepts ", facts.cite(step, row.get("id_accept")), " of in-distribution test inputs. "]
    weak = [s for s, a in aurocs.items() if not isinstance(a, (int, float)) or a < GUARD_RELIABLE_AUROC]
    strong = [s for s in sets if s not in weak]
    if strong:
        parts.append(f"It can route inputs like those of {', '.join(strong)} to a person instead of answering. ")
    if weak:
        parts.append(f"On {', '.join(weak)} its AUROC is below {GUARD_RELIABLE_AUROC}: it does not reliably tell "
                     "such inputs from familiar ones, so it must not be relied on to route them to a person.")
    sec.para(*parts)
    return True


def reviews(facts: _Facts, sec: Section) -> bool:
    """Review-queue statistics of the run: items enqueued (by reason) and decisions (by outcome and reviewer)."""
    queued, decided = facts.all("review.enqueued"), facts.all("review.decided")
    if not queued:
        return False
    reasons = Counter(str(e.data.get("reason", "?")) for e in queued)
    outcomes = Counter(str(e.data.get("decision", "?")) for e in decided)
    people = sorted({str(e.data.get("reviewer") or e.actor) for e in decided})
    last = decided[-1] if decided else queued[-1]
    finals = sum(n for k, n in outcomes.items() if k != "escalated")
    sec.para("Human review of predictions (review queue, from the ledger): ", _text_fact(facts, len(queued), last),
             " items sent to review (", ", ".join(f"{k}: {n}" for k, n in sorted(reasons.items())), "); ",
             _text_fact(facts, len(decided), last), " decisions (",
             ", ".join(f"{k}: {n}" for k, n in sorted(outcomes.items())) or "none", ") by ",
             _text_fact(facts, ", ".join(people) or "nobody yet", last), "; ",
             _text_fact(facts, max(len(queued) - finals, 0), last), " still open or escalated.")
    return True


def oversight(facts: _Facts, sec: Section) -> None:
    """Human oversight (Art. 14): the measures the provider declared, the review queue as used, the guard."""
    meta, rev = _metadata(facts)
    if meta.get("oversight_measures"):
        sec.para("Human oversight measures (as declared in the recipe):")
        sec.bullets(_cited_list(facts, list(meta["oversight_measures"]), rev))
    reviewed = reviews(facts, sec)
    guarded = guard(facts, sec)
    if not meta.get("oversight_measures"):
        sec.todo("who oversees the system, their competence and authority, and how they can override or stop it "
                 "(recipe metadata: oversight_measures)")
    elif not reviewed and not guarded:
        sec.para("No review decision or OOD guard is recorded for this run.")


def promotions(facts: _Facts, sec: Section) -> bool:
    """Promotions and revocations of the run's model, each from its ledger event."""
    rows: list[list[list[Span | str] | Span | str]] = []
    revoked = {int(e.data.get("promotion_seq", 0)): e for e in facts.all("model.revoked")}
    for e in facts.all("model.promoted"):
        r = revoked.get(e.seq)
        suites = ", ".join(f"{s.get('name')} {'passed' if s.get('passed') else 'FAILED'}"
                           for s in e.data.get("suites") or [] if isinstance(s, dict)) or "no suite"
        rows.append([_text_fact(facts, e.time[:19], e), _text_fact(facts, e.data.get("variant", "?"), e),
                     _text_fact(facts, e.data.get("stage", "?"), e),
                     _text_fact(facts, e.data.get("approver") or e.actor, e), _text_fact(facts, suites, e),
                     _text_fact(facts, f"revoked {r.time[:19]} by {r.data.get('approver') or r.actor}: "
                                       f"{r.data.get('reason', '')}", r) if r is not None else "standing"])
    if not rows:
        return False
    sec.para("Promotions of this run's model (the promotion gate's decisions, from the ledger):")
    sec.table(["time (UTC)", "variant", "stage", "approved by", "regression suites", "status"], rows)
    return True


def lifecycle(facts: _Facts, sec: Section) -> None:
    """Annex IV §6: what the ledger records about the run after it was built (evaluations, promotions,
    revocations, reviews, uses of altered files)."""
    evaluations = facts.all("suite.evaluated")
    if evaluations:
        sec.para("Regression suites evaluated on this run: ", *[p for i, e in enumerate(evaluations) for p in (
            ", " if i else "", _text_fact(facts, f"{e.data.get('suite')} on {e.data.get('variant')}: "
                                                 f"{'passed' if e.data.get('passed') else 'FAILED'}", e))], ".")
    if not promotions(facts, sec):
        sec.para("The ledger records no promotion of this run's model.")
    reviews(facts, sec)
    overrides = facts.all("integrity.overridden")
    if overrides:
        sec.para("Files of this run were used after they no longer matched the ledger (--allow-modified): ",
                 *[p for i, e in enumerate(overrides) for p in (", " if i else "",
                                                                _text_fact(facts, f"{e.data.get('use')}", e))], ".")
    sec.todo("changes made outside this run (earlier runs, retraining, new versions) and how they were assessed")


def post_market(facts: _Facts, sec: Section) -> None:
    meta, rev = _metadata(facts)
    if meta.get("post_market_monitoring"):
        sec.para("Post-market monitoring plan (as declared in the recipe): ",
                 _text_fact(facts, meta["post_market_monitoring"], rev))
    else:
        sec.todo("the post-market monitoring plan (Art. 72; recipe metadata: post_market_monitoring): what is "
                 "monitored in operation (e.g. ledger events, OOD-guard rejection rate, review-queue outcomes), how "
                 "often, by whom, and the thresholds that trigger action")


def probe_result(facts: _Facts, sec: Section) -> None:
    """Whether fine-tuning beat the linear probe its head started from (``finetune_beats_probe``, recorded by the
    evaluate step), said in words either way."""
    for e in facts.all("step.finished"):
        m = e.data.get("metrics") or {}
        if "finetune_beats_probe" not in m:
            continue
        ci = m.get("finetune_probe_gain_ci")
        parts: list[Span | str] = ["Fine-tuning against the linear probe its head started from: accuracy gain ",
                                   facts.cite(e, m.get("finetune_probe_gain"), "{:+.3f}")]
        if isinstance(ci, list) and len(ci) == 2:
            parts += [" (95% interval ", facts.cite(e, ci[0], "{:+.3f}"), " to ", facts.cite(e, ci[1], "{:+.3f}"), ")"]
        if m["finetune_beats_probe"] is True:
            parts.append(": fine-tuning beat its linear-probe start.")
        else:
            parts.append(": fine-tuning did NOT beat its linear-probe start — the fine-tuned model is no better than "
                         "the cheaper probe on these test items.")
        sec.para(*parts)
        return
