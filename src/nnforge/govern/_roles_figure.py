"""The Roles figure of issue 19, measured: a simulated review in which every decision goes through a token, then
forged or missing credentials, each of which must be refused with nothing written.

``run(workspace)`` creates a fresh ledger and user store in ``workspace`` (an admin, two reviewers — one with a
signing key —, an approver, a reviewer whose token expires), queues ``decisions`` items, has them decided
through :meth:`UserStore.authenticate` (approve, override, out of scope, escalate, and the approver deciding the
escalated ones), then tries ``forged`` credentials in turn: a wrong token, a reviewer's token used to promote, a
reviewer's token used to add a user, an expired token, no token, a rotated (old) token and a removed user's
token. A try counts as refused only when it raised :class:`AccessDenied` and the ledger did not grow.
``benchmarks/govern/integrity.py`` and ``tests/govern/test_users.py`` call it.
"""

from __future__ import annotations

import datetime as _dt
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nnforge.errors import ConfigError
from nnforge.govern.promotion import promote
from nnforge.govern.review import ReviewQueue
from nnforge.govern.users import AccessDenied, UserStore, verify_decision
from nnforge.ledger import Ledger
from nnforge.ledger.signing import generate_keypair, public_key_pem

__all__ = ["run"]

def _decide_all(q: ReviewQueue, store: UserStore, tokens: dict[str, str], ids: list[int], key: Path,
                decisions: int) -> None:
    """Exactly ``decisions`` decision events, each made with a freshly authenticated token; an escalated item
    is decided at once by the approver (two events)."""
    made = n = 0
    while made < decisions:
        name = ("ana", "ben", "carla")[n % 3]
        kind = ("approve", "override", "out-of-scope", "escalate")[n % 4]
        if kind == "escalate" and made + 2 > decisions:
            kind = "approve"
        q.decide(ids[n], reviewer=store.authenticate(tokens[name]), decision=kind, note=f"simulated #{n}",
                 override_label="tragedy" if kind == "override" else None, key_file=key if name == "ben" else None)
        made += 1
        if kind == "escalate":
            q.decide(ids[n], reviewer=store.authenticate(tokens["carla"]), decision="approve")
            made += 1
        n += 1


def _forgeries(store: UserStore, tokens: dict[str, str], q: ReviewQueue, workspace: Path,
               old: dict[str, str]) -> list[Callable[[], Any]]:
    later = _dt.datetime.now(_dt.UTC) + _dt.timedelta(days=2)
    led = q.ledger

    def decide(token: str | None, **kw: Any) -> Callable[[], Any]:
        return lambda: q.decide(q.list("open")[0].id, reviewer=store.authenticate(token, **kw), decision="approve")

    return [
        decide(f"ana:{secrets.token_urlsafe(32)}"),                                  # wrong token
        lambda: promote(led, workspace / "runs" / "none", approver=store.authenticate(tokens["ana"])),  # role lacked
        lambda: store.add(f"x{secrets.token_hex(3)}", "admin", by=store.authenticate(tokens["ben"]), ledger=led),
        decide(tokens["dora"], now=later),                                          # expired login
        decide(None),                                                               # no token
        decide(old["ana"]),                                                         # rotated token
        decide(old["eve"]),                                                         # removed user's token
    ]


def run(workspace: str | os.PathLike[str], decisions: int = 200, forged: int = 100) -> dict[str, int]:
    """Measure the figure in a fresh ``workspace``; returns ``decisions``, ``decisions_with_authenticated_user``,
    ``decisions_signed`` (valid signature by the recorded user's key), ``forged_credentials_tried`` and
    ``forged_credentials_refused``."""
    ws = Path(workspace)
    if (ws / "ledger.db").exists():
        raise ConfigError(f"{ws}: already holds a ledger; the simulation needs a fresh folder")
    ws.mkdir(parents=True, exist_ok=True)
    location = ws / "ledger.db"
    store = UserStore.for_ledger(location)
    _, pub = generate_keypair(ws / "keys-ben")
    with Ledger.open(location, actor="simulation") as led:
        root = store.add("root", "admin", by=None, ledger=led)[1]
        by = store.authenticate(root)
        tokens = {"root": root}
        for name, role, extra in (("ana", "reviewer", {}), ("ben", "reviewer", {"public_key": public_key_pem(pub)}),
                                  ("carla", "approver", {}), ("dora", "reviewer", {"expires_days": 1.0}),
                                  ("eve", "reviewer", {})):
            tokens[name] = store.add(name, role, by=by, ledger=led, **extra)[1]
        old = {"ana": tokens["ana"], "eve": tokens["eve"]}
        tokens["ana"] = store.rotate("ana", by=by, ledger=led)
        store.remove("eve", by=by, ledger=led)
    with ReviewQueue.open(location, actor="simulation") as q:
        ids = [q.enqueue(run="simulated", variant="int8", text=f"passage {i}", label="comedy",
                         confidence=0.4, reason="low_confidence").id for i in range(decisions + 20)]
        _decide_all(q, store, tokens, ids, ws / "keys-ben" / "ledger_ed25519.pem", decisions)
        tries = _forgeries(store, tokens, q, ws, old)
        refused = 0
        for n in range(forged):
            before = q.ledger.store.head()
            try:
                tries[n % len(tries)]()
            except AccessDenied:
                refused += q.ledger.store.head() == before  # and nothing was written
        events = q.ledger.events(kind="review.decided")
    known = {u.name for u in store.users()}
    authenticated = [e for e in events if (e.data.get("user") or {}).get("name") == e.actor and e.actor in known
                     and (e.data.get("user") or {}).get("via") == "token"]
    return {"decisions": len(events), "decisions_with_authenticated_user": len(authenticated),
            "decisions_signed": sum(verify_decision(e, store) == "signed" for e in events),
            "forged_credentials_tried": forged, "forged_credentials_refused": refused}
