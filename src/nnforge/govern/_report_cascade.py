"""The report's cascade section, from the ledger's ``cascade.evaluated`` events (``nnforge cascade``): each
evaluation's tiers, thresholds, the share of inputs each tier answered, the cascade's accuracy and each model's
accuracy alone."""

from __future__ import annotations

from typing import Any

from nnforge.ledger import Event

__all__ = ["cascade_section"]


def cascade_section(events: list[Event]) -> list[dict[str, Any]]:
    """One row per evaluation, oldest first: ``seq, time, by, split, inputs, accuracy, best_alone`` (name, accuracy)
    and ``tiers`` (name, threshold, share, accuracy alone); empty when the run's cascades were never evaluated."""
    out = []
    for e in events:
        if e.kind != "cascade.evaluated":
            continue
        d = e.data
        alone = d.get("alone") or {}
        thresholds, shares = d.get("thresholds") or {}, d.get("shares") or {}
        best = max(alone.items(), key=lambda kv: kv[1]) if alone else None
        out.append({"seq": e.seq, "time": e.time, "by": e.actor, "split": d.get("split"), "inputs": d.get("inputs"),
                    "accuracy": d.get("accuracy"), "best_alone": best,
                    "tiers": [{"name": n, "threshold": thresholds.get(n), "share": shares.get(n), "alone": alone.get(n)}
                              for n in d.get("tiers") or []]})
    return out
