"""The report's serving section, from the ledger's ``serve.*`` events: each time the run was served (by whom,
which variant and backend), what it decided (answered, flagged, sent to a person), how much of its input the
OOD guard called out of range, and every halt and resume with who and why (AI Act Art. 12 and 14)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from nnforge.ledger import Event

__all__ = ["serve_section"]


def serve_section(events: list[Event]) -> dict[str, Any] | None:
    """``{"sessions": [...], "decisions": {status: n}, "ood_share", "callers", "oversight": [...], "overrides"}``,
    or None when the run was never served."""
    sessions: list[dict[str, Any]] = []
    statuses: Counter[str] = Counter()
    callers: Counter[str] = Counter()
    scored = flagged_ood = 0
    served_items: set[int] = set()
    oversight: list[dict[str, Any]] = []
    for e in events:
        if e.kind == "serve.started":
            sessions.append({"seq": e.seq, "time": e.time, "by": e.actor, "variant": e.data.get("variant"),
                             "backend": e.data.get("backend"), "answered": 0, "flagged": 0, "review": 0,
                             "stopped": None})
        elif e.kind == "serve.decisions":
            for row in e.data.get("decisions", []):
                status = str(row.get("status"))
                statuses[status] += 1
                callers[str(row.get("caller"))] += 1
                if sessions:
                    sessions[-1][status] = sessions[-1].get(status, 0) + 1
                if row.get("ood_score") is not None:
                    scored += 1
                    flagged_ood += "ood" in (row.get("reasons") or [])
                if row.get("review_item") is not None:
                    served_items.add(int(row["review_item"]))
        elif e.kind == "serve.stopped" and sessions:
            sessions[-1]["stopped"] = e.time
        elif e.kind in ("serve.halted", "serve.resumed"):
            oversight.append({"seq": e.seq, "time": e.time, "what": e.kind.split(".")[1],
                              "by": (e.data.get("user") or {}).get("name", e.actor), "reason": e.data.get("reason")})
    if not sessions:
        return None
    decided = [e for e in events if e.kind == "review.decided" and e.data.get("item") in served_items]
    return {"sessions": sessions, "decisions": dict(statuses), "total": sum(statuses.values()),
            "callers": dict(callers), "ood_share": flagged_ood / scored if scored else None,
            "oversight": oversight, "reviewed": len(decided),
            "overridden": sum(e.data.get("decision") == "overridden" for e in decided)}
