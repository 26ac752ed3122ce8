"""The review pages: the queue, one item, and its decision forms (approve, override, out of scope, escalate), each
decision made as the logged-in user."""

from __future__ import annotations

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from nnforge.errors import ConfigError, NnforgeError
from nnforge.govern.dashboard._context import Dashboard
from nnforge.govern.review import DECISIONS, STATUSES
from nnforge.govern.users import AccessDenied

__all__ = ["review_pages"]

_MAX_NOTE = 10_000


def review_pages(d: Dashboard) -> APIRouter:
    """``/review?status=…``, ``/review/{id}`` and ``POST /review/{id}/decide``."""
    router = APIRouter()
    runs = d.runs

    @router.get("/review", response_class=HTMLResponse)
    def review_page(request: Request, status: str = "open") -> Response:
        s = d.session_of(request)
        if s is None:
            return d.to_login()
        if status not in (*STATUSES, "all"):
            return d.error(request, 400, f"status {status!r} is not one of {[*STATUSES, 'all']}", s)
        q = d.open_queue(request, s)
        if isinstance(q, HTMLResponse):
            return q
        try:
            items = q.list(None if status == "all" else status)
            stats = q.stats()
        finally:
            q.close()
        labels = {i.run: runs.labels(i.run) for i in items}
        return d.page(request, "review.j2", session=s, items=items, stats=stats, status=status,
                      statuses=[*STATUSES, "all"], labels=labels)

    @router.get("/review/{item_id}", response_class=HTMLResponse)
    def item_page(request: Request, item_id: int) -> Response:
        s = d.session_of(request)
        if s is None:
            return d.to_login()
        if not 1 <= item_id < 2**63:
            return d.error(request, 404, f"no review item {item_id}", s)
        q = d.open_queue(request, s)
        if isinstance(q, HTMLResponse):
            return q
        try:
            item = q.get(item_id)
        except ConfigError as exc:
            return d.error(request, 404, str(exc), s)
        finally:
            q.close()
        return d.page(request, "item.j2", session=s, item=item, labels=runs.labels(item.run))

    @router.post("/review/{item_id}/decide", response_class=HTMLResponse)
    def decide(request: Request, item_id: int, csrf: str = Form(""), action: str = Form(""),
               override_label: str = Form(""), note: str = Form("")) -> Response:
        s = d.session_of(request)
        refused = d.post_refusal(request, s, csrf)
        if refused is not None:
            return refused
        if action not in DECISIONS:
            return d.error(request, 400, f"action {action!r} is not one of {list(DECISIONS)}", s)
        if not 1 <= item_id < 2**63:
            return d.error(request, 404, f"no review item {item_id}", s)
        if len(note) > _MAX_NOTE:
            return d.error(request, 400, f"a note holds at most {_MAX_NOTE} characters", s)
        q = d.open_queue(request, s)
        if isinstance(q, HTMLResponse):
            return q
        try:
            item = q.get(item_id)
            labels = None
            if action == "override":
                labels = runs.labels(item.run)
                if labels is None:
                    raise ConfigError(f"cannot check the override label {override_label!r}: run {item.run} (its "
                                      f"config.json with label_names) is not under {runs.root}")
            q.decide(item_id, reviewer=s.user, decision=action,
                     override_label=override_label if action == "override" else None, note=note,
                     allowed_labels=labels)
        except AccessDenied as exc:
            return d.error(request, 403, str(exc), s)
        except NnforgeError as exc:
            return d.error(request, 400, str(exc), s)
        finally:
            q.close()
        return RedirectResponse(f"/review/{item_id}", status_code=303)

    return router
