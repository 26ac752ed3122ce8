"""Human oversight: a review queue of model outputs that a person approves or overrides.

Items live in the ledger's own database (its SQLite file or its PostgreSQL database), in a table
``review_items`` next to ``events``, so one database holds both the queue and its audit trail. Every enqueue appends a ``review.enqueued`` event and every decision a
``review.decided`` event (reviewer, item, decision, seconds from enqueue to decision), so the hash chain
proves who decided what and when even if the queue table itself were edited later.

A decision is made by an authenticated user (:class:`nnforge.govern.users.User`, from
:meth:`UserStore.authenticate <nnforge.govern.users.UserStore.authenticate>`) with at least the reviewer role:
approve the model's label, override it with another, mark the input **out of scope** (the model should not have
been asked) or **escalate** it to an approver, who then decides it (an escalated item stays pending).

Which outputs go to review is decided by :func:`review_rules`: low confidence, flagged by an OOD guard
(``nnforge.explain.OODGuard``), or drawn into a seeded random audit sample of the rest — the audit sample is
what estimates the error rate of the outputs nobody would otherwise look at.

>>> q = ReviewQueue.open("/tmp/demo-ledger.db")  # doctest: +SKIP
>>> item = q.enqueue(run="r1", variant="fp32", text="…", label="comedy", confidence=0.41,
...                  reason="low_confidence")  # doctest: +SKIP
>>> ana = UserStore.for_ledger("/tmp/demo-ledger.db").authenticate(token)  # doctest: +SKIP
>>> q.decide(item.id, reviewer=ana, approve=False, override_label="tragedy", note="act V").status  # doctest: +SKIP
'overridden'
"""

from __future__ import annotations

import builtins
import datetime as _dt
import hashlib
import os
import random
import sqlite3
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from nnforge.errors import ConfigError, DataError, IntegrityError
from nnforge.govern.users import AccessDenied, User, decision_data, require
from nnforge.ledger import Event, Ledger

__all__ = ["REASONS", "STATUSES", "DECISIONS", "ReviewItem", "ReviewPick", "ReviewQueue", "review_rules"]

REASONS = ("low_confidence", "ood", "audit")
STATUSES = ("open", "approved", "overridden", "out_of_scope", "escalated")
DECISIONS = ("approve", "override", "out-of-scope", "escalate")
"""What a reviewer may decide; each gives the status of the same position in ``STATUSES[1:]``."""
_FINAL = ("approved", "overridden", "out_of_scope")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS review_items (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    created        TEXT NOT NULL,
    run            TEXT NOT NULL,
    variant        TEXT,
    input_sha256   TEXT NOT NULL,
    input_text     TEXT NOT NULL,
    label          TEXT NOT NULL,
    confidence     REAL NOT NULL,
    reason         TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'open',
    reviewer       TEXT,
    decided        TEXT,
    override_label TEXT,
    note           TEXT NOT NULL DEFAULT ''
);
"""
_PG_SCHEMA = _SCHEMA.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY").replace(
    "REAL", "DOUBLE PRECISION")
_PG_LOCK_KEY = 0x6E6E7276  # serialises creating the table across processes

_COLUMNS = ("id", "created", "run", "variant", "input_sha256", "input_text", "label", "confidence", "reason",
            "status", "reviewer", "decided", "override_label", "note")


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC)


def text_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ReviewItem:
    """One queued output. ``input_text`` is stored verbatim; displays must escape it (it is untrusted)."""

    id: int
    created: str
    run: str
    variant: str | None
    input_sha256: str
    input_text: str
    label: str
    confidence: float
    reason: str
    status: str
    reviewer: str | None
    decided: str | None
    override_label: str | None
    note: str

    @property
    def final_label(self) -> str:
        """The label that stands after review (the override, else the model's); ``"(out of scope)"`` for an input
        a reviewer marked out of scope, ``"(pending)"`` while open or escalated."""
        if self.status == "out_of_scope":
            return "(out of scope)"
        if self.status in ("open", "escalated"):
            return "(pending)"
        return self.override_label or self.label

    @property
    def decision_seconds(self) -> float | None:
        if self.decided is None:
            return None
        return (_dt.datetime.fromisoformat(self.decided) - _dt.datetime.fromisoformat(self.created)).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "decision_seconds": self.decision_seconds}


@dataclass(frozen=True)
class ReviewPick:
    """An input chosen for review: its position in the predictions and why."""

    index: int
    reason: str


def check_review_rates(min_confidence: float, audit_rate: float,
                       names: tuple[str, str] = ("min_confidence", "audit_rate")) -> None:
    """Both review-rule rates must be in [0, 1]; ``names`` are how the caller spells them (CLI options)."""
    for name, value in (zip(names, (min_confidence, audit_rate), strict=True)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"review rules: {name} must be in [0, 1]; got {value}")


def review_rules(predictions: Sequence[dict[str, Any]], *, min_confidence: float = 0.5,
                 ood_flags: Sequence[bool] | None = None, audit_rate: float = 0.02, seed: int = 0) -> list[ReviewPick]:
    """Which predictions need a human, and why; one reason per input, in input order.

    An input flagged by the OOD guard gets ``ood`` (the model is outside what it was built for, whatever its
    confidence); else one with ``confidence < min_confidence`` gets ``low_confidence``; else it joins the
    ``audit`` sample with probability ``audit_rate``. The audit draw is one seeded Bernoulli per input, made for
    every input in order, so which inputs are audited depends only on ``seed`` and the count, not on the flags.

    Args:
        predictions: objects with a ``confidence`` in [0, 1] (what ``Run.predict`` returns).
        min_confidence: outputs below it are reviewed.
        ood_flags: per prediction, ``True`` when an OOD guard flagged the input (``OODResult.is_ood``).
        audit_rate: fraction of the remaining outputs sampled for review, in [0, 1].
        seed: seed of the audit sample.
    """
    check_review_rates(min_confidence, audit_rate)
    flags = list(ood_flags) if ood_flags is not None else [False] * len(predictions)
    if len(flags) != len(predictions):
        raise DataError(f"review rules: {len(flags)} OOD flags for {len(predictions)} predictions; "
                        "pass one flag per prediction")
    rng = random.Random(seed)
    picks = []
    for i, (pred, flagged) in enumerate(zip(predictions, flags, strict=True)):
        audit = rng.random() < audit_rate
        try:
            conf = float(pred["confidence"])
        except (KeyError, TypeError, ValueError):
            raise DataError(f"review rules: prediction #{i} has no numeric 'confidence' "
                            f"(got keys {sorted(pred) if isinstance(pred, dict) else type(pred).__name__})") from None
        if bool(flagged):
            picks.append(ReviewPick(i, "ood"))
        elif conf < min_confidence:
            picks.append(ReviewPick(i, "low_confidence"))
        elif audit:
            picks.append(ReviewPick(i, "audit"))
    return picks


def _summary(items: list[ReviewItem]) -> dict[str, Any]:
    decided = [i for i in items if i.status in _FINAL]
    approved = sum(i.status == "approved" for i in decided)
    seconds = [s for i in decided if (s := i.decision_seconds) is not None]
    return {"items": len(items), "open": sum(i.status == "open" for i in items), "decided": len(decided),
            "approved": approved, "overridden": sum(i.status == "overridden" for i in decided),
            "out_of_scope": sum(i.status == "out_of_scope" for i in decided),
            "escalated": sum(i.status == "escalated" for i in items),
            "approval_rate": approved / len(decided) if decided else None,
            "median_decision_seconds": statistics.median(seconds) if seconds else None}


def _decision(decision: str | None, approve: bool, override_label: str | None) -> str:
    """The decision asked for: ``decision``, or the older ``approve=True`` / ``override_label=…`` form."""
    if decision is None:
        if approve == (override_label is not None):
            raise ConfigError("review decision: give exactly one of approve or an override label (or a decision: "
                              f"one of {list(DECISIONS)})")
        return "approve" if approve else "override"
    if decision not in DECISIONS:
        raise ConfigError(f"review decision: {decision!r} is not one of {list(DECISIONS)}")
    if approve or (override_label is not None) != (decision == "override"):
        raise ConfigError(f"review decision: give exactly one decision ({decision!r} with approve="
                          f"{approve}, override label {override_label!r})")
    return decision


class ReviewQueue:
    """The review queue of one ledger database. Use :meth:`open`.

    Args:
        ledger: the ledger whose database also holds the queue; events go to it.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.location = ledger.location
        self._pg = ledger.store.dialect == "postgresql"
        try:
            self._db = ledger.store.connect()
            if self._pg:
                with self._db.transaction():
                    self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_KEY,))
                    self._db.execute(_PG_SCHEMA)
            else:
                self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise IntegrityError(f"{self.location}: not a readable ledger database ({exc})") from None

    def _sql(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement; the queries are written with ``?`` placeholders, psycopg wants ``%s``."""
        return self._db.execute(sql.replace("?", "%s") if self._pg else sql, tuple(params))

    @classmethod
    def open(cls, location: str | os.PathLike[str] | None = None, actor: str | None = None) -> ReviewQueue:
        """Open the queue in the ledger at ``location`` (default ``.nnforge/ledger.db``), creating it if needed."""
        return cls(Ledger.open(location, actor=actor))

    def close(self) -> None:
        self._db.close()
        self.ledger.close()

    def __enter__(self) -> ReviewQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing ----------------------------------------------------------------------------------------

    def enqueue(self, *, run: str, text: str, label: str, confidence: float, reason: str,
                variant: str | None = None) -> ReviewItem:
        """Queue one model output for review and record ``review.enqueued`` (input by sha256, not its text)."""
        return self.enqueue_many([{"run": run, "text": text, "label": label, "confidence": confidence,
                                   "reason": reason, "variant": variant}])[0]

    def enqueue_many(self, outputs: Sequence[dict[str, Any]],
                     also: Callable[[list[ReviewItem]], Sequence[tuple[str, dict[str, Any], str | None, str | None]]]
                     | None = None) -> list[ReviewItem]:
        """Queue several outputs (each a dict of :meth:`enqueue`'s arguments): the rows in one transaction and
        their ``review.enqueued`` events in one ledger transaction, with the events ``also(items)`` returns
        (``(kind, data, run, actor)``; e.g. a server's record of the batch that names the items) — all recorded
        or none, and no row stays queued without its event."""
        for o in outputs:
            if o.get("reason") not in REASONS:
                raise ConfigError(f"review item: reason {o.get('reason')!r} is not one of {list(REASONS)}")
            if not o.get("run"):
                raise ConfigError("review item: a run id is required")
        created = _now().isoformat(timespec="microseconds")
        rows = [(created, o["run"], o.get("variant"), text_sha256(o["text"]), o["text"], o["label"],
                 float(o["confidence"]), o["reason"]) for o in outputs]
        insert = ("INSERT INTO review_items (created, run, variant, input_sha256, input_text, label, confidence, "
                  "reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id")
        if self._pg:
            with self._db.transaction():
                ids = [int(self._sql(insert, r).fetchone()[0]) for r in rows]
        else:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                ids = [int(self._sql(insert, r).fetchone()[0]) for r in rows]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        items = [ReviewItem(id=i, created=r[0], run=r[1], variant=r[2], input_sha256=r[3], input_text=r[4],
                            label=r[5], confidence=r[6], reason=r[7], status="open", reviewer=None, decided=None,
                            override_label=None, note="") for i, r in zip(ids, rows, strict=True)]
        events: list[tuple[str, dict[str, Any], str | None, str | None]] = [
            ("review.enqueued", {"item": it.id, "variant": it.variant, "input_sha256": it.input_sha256,
                                 "label": it.label, "confidence": it.confidence, "reason": it.reason}, it.run, None)
            for it in items]
        try:
            self.ledger.append_many([*events, *(also(items) if also is not None else ())])
        except BaseException as exc:  # no queued item without its event
            if ids:
                self._undo(exc, f"DELETE FROM review_items WHERE id IN ({', '.join('?' * len(ids))})", ids)
            raise
        return items

    def _undo(self, exc: BaseException, sql: str, params: Sequence[Any]) -> None:
        """Take back a table change whose ledger event could not be written (the event is the record)."""
        try:
            self._sql(sql, params)
        except Exception as undo_exc:  # noqa: BLE001 - reported on the original error, which is re-raised
            exc.add_note(f"and the review table could not be restored ({undo_exc}); run 'nnforge review list'")

    def _check_recorded(self, item: ReviewItem) -> None:
        """The item must be the one the ledger recorded queueing (same input), and not finally decided there."""
        if text_sha256(item.input_text) != item.input_sha256:
            raise IntegrityError(f"review item {item.id}: its input text no longer matches the sha256 recorded when "
                                 "it was queued (the review table was edited)")
        queued = decided = None
        for seq, hash_, body in self.ledger.store.rows():
            if item.input_sha256 not in body:  # only events about this input are parsed (a queue of thousands)
                continue
            try:
                e = Event.from_row(seq, hash_, body)
            except ValueError:
                raise IntegrityError(f"ledger event #{seq} is not valid JSON; run 'nnforge ledger verify'") from None
            if e.run == item.run and e.data.get("item") == item.id and e.data.get("input_sha256") == item.input_sha256:
                if e.kind == "review.enqueued":
                    queued = e
                elif e.kind == "review.decided":
                    decided = e
        if queued is None:
            raise IntegrityError(f"review item {item.id}: the ledger at {self.location} holds no review.enqueued "
                                 "event for it (the review table was edited); it cannot be decided")
        if decided is not None and decided.data.get("decision") != "escalated":
            raise ConfigError(f"review item {item.id} was already decided (ledger event #{decided.seq}: "
                              f"{decided.data.get('decision')} by {decided.data.get('reviewer')}); a decision "
                              "cannot be changed")

    def decide(self, item_id: int, *, reviewer: User, decision: str | None = None, approve: bool = False,
               override_label: str | None = None, note: str = "", allowed_labels: Sequence[str] | None = None,
               key_file: str | os.PathLike[str] | None = None) -> ReviewItem:
        """Decide one item, once: ``approve`` the model's output, ``override`` it with another label, mark the
        input ``out-of-scope``, or ``escalate`` it (an approver or admin then decides it finally).

        ``reviewer`` is the authenticated user (role reviewer or higher; approver for an escalated item). Records
        ``review.decided`` with the user (name, role, how authenticated; also the event's actor), a signature when
        ``key_file`` is given (required for a token user with a registered key), the decision, the labels and
        the seconds from enqueue to decision. ``allowed_labels`` (the run's label names), when given, must
        contain the override label. The older form ``approve=True`` / ``override_label=…`` still works.

        Raises:
            AccessDenied: no authenticated user, a role too low, a missing or foreign signing key.
        """
        require(reviewer, "review")
        what = _decision(decision, approve, override_label)
        if override_label is not None:
            if not override_label:
                raise ConfigError("review decision: the override label is empty")
            if allowed_labels is not None and override_label not in allowed_labels:
                raise ConfigError(f"review decision: override label {override_label!r} is not one of the run's "
                                  f"labels {list(allowed_labels)}")
        item = self.get(item_id)
        if override_label is not None and override_label == item.label:
            raise ConfigError(f"review decision: {override_label!r} is what the model said; approve it instead "
                              "(an override records a different label)")
        if item.status not in ("open", "escalated"):
            raise ConfigError(f"review item {item_id} was already decided ({item.status} by {item.reviewer} at "
                              f"{item.decided}); a decision cannot be changed")
        if item.status == "escalated":
            if what == "escalate":
                raise ConfigError(f"review item {item_id} is already escalated (by {item.reviewer}); an approver "
                                  "decides it now")
            if not reviewer.can("promote"):
                raise AccessDenied(f"review item {item_id} was escalated by {item.reviewer}: an approver or admin "
                                   f"decides it, and {reviewer.name} is a {reviewer.role}")
        self._check_recorded(item)
        status = STATUSES[1 + DECISIONS.index(what)]
        decided = _now().isoformat(timespec="microseconds")
        data = {"item": item_id, "reviewer": reviewer.name, "decision": status, "reason": item.reason,
                "label": item.label, "override_label": override_label, "note": note,
                "input_sha256": item.input_sha256, "seconds": None}
        cur = self._sql(
            "UPDATE review_items SET status = ?, reviewer = ?, decided = ?, override_label = ?, note = ? "
            "WHERE id = ? AND status = ?", (status, reviewer.name, decided, override_label, note, item_id,
                                            item.status))
        if cur.rowcount != 1:  # another process decided it between our read and our write
            raise ConfigError(f"review item {item_id} was already decided; a decision cannot be changed")
        done = self.get(item_id)
        try:
            data["seconds"] = done.decision_seconds
            signed = decision_data(reviewer, "review", "review.decided", item.run, data, key_file)
            self.ledger.append("review.decided", signed, run=item.run, actor=reviewer.name)
        except BaseException as exc:  # no decision in the table without its event: the item is as it was
            self._undo(exc, "UPDATE review_items SET status = ?, reviewer = ?, decided = ?, override_label = ?, "
                            "note = ? WHERE id = ? AND decided = ?",
                       (item.status, item.reviewer, item.decided, item.override_label, item.note, item_id, decided))
            raise
        return done

    # --- reading ----------------------------------------------------------------------------------------

    def get(self, item_id: int) -> ReviewItem:
        if isinstance(item_id, bool) or not isinstance(item_id, int) or not 1 <= item_id < 2**63:
            raise ConfigError(f"review item {item_id!r}: no such item (ids are whole numbers from 1)")
        row = self._sql(f"SELECT {', '.join(_COLUMNS)} FROM review_items WHERE id = ?", (int(item_id),)).fetchone()
        if row is None:
            n = self._sql("SELECT COUNT(*) FROM review_items").fetchone()[0]
            raise ConfigError(f"review item {item_id}: no such item in {self.location} ({n} items; "
                              "'nnforge review list' shows them)")
        return ReviewItem(*row)

    def list(self, status: str | None = None) -> builtins.list[ReviewItem]:
        """Items oldest first, optionally only those with ``status`` (one of :data:`STATUSES`)."""
        if status is not None and status not in STATUSES:
            raise ConfigError(f"review list: status {status!r} is not one of {list(STATUSES)}")
        sql = f"SELECT {', '.join(_COLUMNS)} FROM review_items"
        rows = self._sql(sql + " WHERE status = ? ORDER BY id", (status,)) if status else self._sql(sql + " ORDER BY id")
        return [ReviewItem(*r) for r in rows]

    def stats(self) -> dict[str, Any]:
        """Counts, approval rate and median decision time overall, per reviewer and per reason."""
        items = self.list()
        by_reviewer: dict[str, list[ReviewItem]] = {}
        by_reason: dict[str, list[ReviewItem]] = {}
        for i in items:
            by_reason.setdefault(i.reason, []).append(i)
            if i.reviewer:
                by_reviewer.setdefault(i.reviewer, []).append(i)
        return {"total": _summary(items),
                "by_reviewer": {k: _summary(v) for k, v in sorted(by_reviewer.items())},
                "by_reason": {k: _summary(v) for k, v in sorted(by_reason.items())}}
