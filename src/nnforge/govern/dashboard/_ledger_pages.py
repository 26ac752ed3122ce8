"""The ledger pages: the lineage of an artifact and the ledger's events with the chain's verification; a decision's
authenticated user and whether its signature verifies against the user's registered key are shown beside it."""

from __future__ import annotations

import re

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response

from nnforge.errors import IntegrityError, NnforgeError
from nnforge.govern.dashboard._context import Dashboard
from nnforge.govern.users import verify_decision
from nnforge.ledger import Ledger, lineage

__all__ = ["ledger_pages"]

_MAX_EVENTS_SHOWN = 500


def ledger_pages(d: Dashboard) -> APIRouter:
    """``/lineage?artifact=…`` and ``/ledger?run=…&kind=…``."""
    router = APIRouter()

    @router.get("/lineage", response_class=HTMLResponse)
    def lineage_page(request: Request, artifact: str = "") -> Response:
        s = d.session_of(request)
        if s is None:
            return d.to_login()
        if not artifact:
            return d.page(request, "lineage.j2", session=s, artifact="", lineage=None)
        if ":" not in artifact and not re.fullmatch(r"[0-9a-fA-F]{8,64}", artifact):
            # the library also accepts a file path; over the web only RUN_ID:NAME or a sha256 are accepted, so
            # a URL can never make the server hash an arbitrary file
            return d.error(request, 400, f"artifact {artifact!r}: give RUN_ID:NAME (e.g. 20261128-053421-148a00:"
                                         "model:int8) or a sha256 (at least 8 hex digits)", s)
        led = Ledger.open(d.location)
        try:
            lin = lineage(led, artifact, files=False)  # a URL never makes the server read a path
        except NnforgeError as exc:
            return d.error(request, 404, str(exc), s)
        finally:
            led.close()
        return d.page(request, "lineage.j2", session=s, artifact=artifact, lineage=lin)

    @router.get("/ledger", response_class=HTMLResponse)
    def ledger_page(request: Request, run: str = "", kind: str = "") -> Response:
        s = d.session_of(request)
        if s is None:
            return d.to_login()
        led = Ledger.open(d.location)
        shown = led.location  # a PostgreSQL URL with its password redacted
        try:
            check = led.verify()
            try:
                events = led.events(run=run or None, kind=kind or None)
                events_error = ""
            except IntegrityError as exc:
                events, events_error = [], str(exc)
        finally:
            led.close()
        total = len(events)
        shown_events = events[-_MAX_EVENTS_SHOWN:]
        proofs = {e.seq: verify_decision(e, d.users) for e in shown_events if isinstance(e.data.get("user"), dict)}
        return d.page(request, "ledger.j2", session=s, check=check, events=shown_events, proofs=proofs,
                      total=total, events_error=events_error, run=run, kind=kind, location=shown)

    return router
