"""Ledger events: canonical JSON, each carrying the SHA-256 of the one before it.

An event's *body* is the canonical JSON (sorted keys, no spaces, UTF-8) of
``{"seq", "run", "kind", "time", "actor", "data", "prev"}``; its *hash* is the SHA-256 of the body.
Changing, deleting or reordering any stored event breaks either its own hash, the next event's
``prev`` or the sequence numbers, and :func:`verify_chain` names the first event where that happens.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = ["GENESIS", "Event", "json_safe", "canonical_json", "event_hash", "Verification", "verify_chain"]

GENESIS = "0" * 64


def json_safe(obj: Any) -> Any:
    """JSON-safe copy: NaN/inf become the strings "nan"/"inf"/"-inf" (read back as such) so the canonical form
    stays valid JSON; keys become strings, and keys that collide as strings are refused."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        out = {str(k): json_safe(v) for k, v in obj.items()}
        if len(out) != len(obj):  # {1: a, "1": b} would keep only one of them
            from nnforge.errors import DataError

            raise DataError(f"event data has keys that are the same once written as text: {sorted(map(repr, obj))}")
        return out
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def canonical_json(obj: Any) -> str:
    return json.dumps(json_safe(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def event_hash(body: str) -> str:
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Event:
    """One stored event."""

    seq: int
    run: str | None
    kind: str
    time: str
    actor: str
    data: dict[str, Any]
    prev: str
    hash: str

    @classmethod
    def from_row(cls, seq: int, hash_: str, body: str) -> Event:
        doc = json.loads(body)
        if not isinstance(doc, dict):
            raise json.JSONDecodeError("an event must be a JSON object", body, 0)
        data = doc.get("data", {})
        if not isinstance(data, dict):  # a malformed event (chained correctly by a rogue writer) must not crash readers
            data = {"malformed_data": data}
        run = doc.get("run")
        return cls(seq=seq, run=None if run is None else str(run), kind=str(doc.get("kind", "")),
                   time=str(doc.get("time", "")), actor=str(doc.get("actor", "")), data=data,
                   prev=str(doc.get("prev", "")), hash=hash_)

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "run": self.run, "kind": self.kind, "time": self.time, "actor": self.actor,
                "data": self.data, "prev": self.prev, "hash": self.hash}


def make_body(seq: int, run: str | None, kind: str, time: str, actor: str, data: dict[str, Any], prev: str) -> str:
    body = canonical_json({"seq": seq, "run": run, "kind": kind, "time": time, "actor": actor, "data": data,
                           "prev": prev})
    try:
        body.encode("utf-8")
    except UnicodeEncodeError as exc:  # lone surrogates: bytes that were not UTF-8 (a shell argument, a file name)
        from nnforge.errors import DataError

        raise DataError(f"a {kind} event cannot hold text that is not valid UTF-8 "
                        f"({body[max(0, exc.start - 30):exc.start]!r} is followed by an undecodable byte)") from None
    return body


@dataclass(frozen=True)
class Verification:
    """The result of checking a chain: ``ok``, how many events, the head, and the first problem."""

    ok: bool
    events: int
    head: str
    broken_seq: int | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "events": self.events, "head": self.head, "broken_seq": self.broken_seq,
                "reason": self.reason}


def _row_problem(expected_seq: int, seq: int, stored_hash: str, body: str, prev: str) -> str:
    """What is wrong with one stored row, or "" when it links correctly to ``prev``."""
    if not (isinstance(seq, int) and isinstance(stored_hash, str) and isinstance(body, str)):
        # a row rewritten with another SQL type (a BLOB body, a NULL hash) is tampering, not a crash
        kinds = f"seq {type(seq).__name__}, hash {type(stored_hash).__name__}, body {type(body).__name__}"
        return f"event #{expected_seq} is stored with the wrong types ({kinds})"
    if seq != expected_seq:
        return f"event #{expected_seq} is missing or out of order (found #{seq} in its place)"
    if event_hash(body) != stored_hash:
        return f"event #{seq} was modified: its content does not match its hash"
    try:
        doc = json.loads(body)
    except json.JSONDecodeError:
        return f"event #{seq} is not valid JSON"
    if not isinstance(doc, dict) or doc.get("seq") != seq:
        return f"event #{seq} carries another sequence number"
    if doc.get("prev") != prev:
        return f"event #{seq} does not follow event #{seq - 1}: the chain was cut, reordered or rewritten"
    return ""


def verify_chain(rows: Iterable[tuple[int, str, str]], expect_head: str | None = None) -> Verification:
    """Check ``(seq, hash, body)`` rows in storage order.

    Args:
        rows: the stored rows, ordered by ``seq``.
        expect_head: a head hash issued earlier (printed in a report, signed); it must still be in the
            chain, which catches deleting the newest events and rewriting the whole chain.
    """
    prev = GENESIS
    count = 0
    seen_head = expect_head is None
    for expected_seq, (seq, stored_hash, body) in enumerate(rows, start=1):
        count += 1
        problem = _row_problem(expected_seq, seq, stored_hash, body, prev)
        if problem:
            return Verification(False, count, prev, expected_seq, problem)
        prev = stored_hash
        if stored_hash == expect_head:
            seen_head = True
    if not seen_head:
        return Verification(False, count, prev, None,
                            f"the expected head {expect_head} is not in the chain: newest events were deleted "
                            "or the chain was rewritten")
    return Verification(True, count, prev)
