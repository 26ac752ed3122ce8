"""The dashboard's web application: server-rendered pages over the ledger, the run folders and the review queue.

Pages (all need a logged-in session): runs (``/``), one run (``/runs/{id}``) with its report
(``/runs/{id}/report``) and files (``/runs/{id}/files/{name}``), lineage of an artifact (``/lineage``), ledger
events and chain verification (``/ledger``), the review queue (``/review``) and one item (``/review/{id}``) with
its approve/override/out-of-scope/escalate forms (``POST /review/{id}/decide``), decided as the logged-in user. Each group of pages is a router of its own
(``_login``, ``_run_pages``, ``_ledger_pages``, ``_review_pages``) over the shared :class:`Dashboard` state; this
module wires them together with the request-size and security-header middleware. See
:mod:`nnforge.govern.dashboard._security` for the login, session and CSRF rules.

Everything shown comes from the ledger and the run folders at request time; untrusted text (model inputs, notes,
labels, file names) is HTML-escaped by Jinja2's autoescape. Only this package's modules import FastAPI.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nnforge.errors import MissingDependencyError

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from jinja2 import Environment, FileSystemLoader
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(f"the dashboard needs FastAPI, Jinja2 and python-multipart ({exc.name} is "
                                 "missing): pip install 'nnforge[dashboard]'") from exc

from nnforge.govern.dashboard._context import COOKIE, RUN_ID, Dashboard, RunFolders
from nnforge.govern.dashboard._ledger_pages import ledger_pages
from nnforge.govern.dashboard._login import login_pages
from nnforge.govern.dashboard._review_pages import review_pages
from nnforge.govern.dashboard._run_pages import run_pages
from nnforge.govern.dashboard._security import SessionStore
from nnforge.govern.users import UserStore

__all__ = ["create_app", "RUN_ID", "LOOPBACK_HOSTS", "COOKIE"]

log = logging.getLogger(__name__)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
"""Host headers accepted by default: a page on another name pointing at 127.0.0.1 (DNS rebinding) is refused."""
PAGE_CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; form-action 'self'; " \
           "frame-ancestors 'none'; base-uri 'none'"
_MAX_BODY_BYTES = 64 << 10


def create_app(ledger_location: str | os.PathLike[str], runs_dir: str | os.PathLike[str] = "runs",
               users_file: str | os.PathLike[str] | None = None, *,
               allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS) -> Any:
    """Build the dashboard's FastAPI application.

    Args:
        ledger_location: the ledger (SQLite path); it also holds the review queue.
        runs_dir: the folder holding ``runs/<run-id>/``.
        users_file: the user store (default: ``users.json`` beside the ledger, where ``nnforge users`` keeps
            it); read at every login and request, so a rotated token or a removed user logs out at once.
        allowed_hosts: accepted ``Host`` header names (default: loopback names only, which stops DNS-rebinding
            pages from reaching a local dashboard); ``None`` accepts any host (``--allow-remote``).

    Returns:
        A ``fastapi.FastAPI`` application; serve it with uvicorn.
    """
    templates = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                            trim_blocks=True, lstrip_blocks=True)
    users = UserStore(users_file) if users_file is not None else UserStore.for_ledger(ledger_location)
    d = Dashboard(str(ledger_location), RunFolders(Path(runs_dir)), users, SessionStore(), templates)

    app = FastAPI(title="nnforge dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.middleware("http")(_limit_body)
    app.middleware("http")(_security_headers)
    for pages in (login_pages, run_pages, ledger_pages, review_pages):
        app.include_router(pages(d))
    if allowed_hosts is not None:  # added last: runs first
        app.middleware("http")(_trusted_hosts(tuple(h.lower() for h in allowed_hosts)))
    return app


def host_name(header: str) -> str:
    """A ``Host`` header without its port: ``"[::1]:8765"`` → ``"[::1]"``, ``"localhost:80"`` → ``"localhost"``.

    (Starlette's own TrustedHostMiddleware cut at the first colon in the version Flower pins, so the dashboard
    served on ``[::1]`` refused its own address.)
    """
    h = header.strip().lower()
    if h.startswith("["):
        end = h.find("]")
        return h[: end + 1] if end != -1 else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _trusted_hosts(allowed: tuple[str, ...]) -> Any:
    """Refuse (400) a request whose ``Host`` is not one of ``allowed`` (``*.example.org`` matches subdomains):
    a DNS-rebinding page reaching a local dashboard under another name is turned away."""

    async def check(request: Request, call_next: Any) -> Any:
        host = host_name(request.headers.get("host", ""))
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if any(host == a or bare == a or (a.startswith("*.") and host.endswith(a[1:])) for a in allowed):
            return await call_next(request)
        return Response("Invalid host header", status_code=400, media_type="text/plain")

    return check


async def _limit_body(request: Request, call_next: Any) -> Response:
    """Refuse request bodies over a few KiB before anything parses them (forms here are tiny)."""
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        length = request.headers.get("content-length")
        if length is None or not length.isdigit():
            return Response("a request body needs a Content-Length", status_code=411, media_type="text/plain")
        if int(length) > _MAX_BODY_BYTES:
            return Response(f"request body over {_MAX_BODY_BYTES} bytes", status_code=413, media_type="text/plain")
    response: Response = await call_next(request)
    return response


async def _security_headers(request: Request, call_next: Any) -> Response:
    try:
        response: Response = await call_next(request)
    except Exception:  # the error page gets the same headers; the traceback goes to the server log only
        log.exception("dashboard: %s %s failed", request.method, request.url.path)
        response = Response("Internal Server Error", status_code=500, media_type="text/plain")
    response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers.setdefault("Cache-Control", "no-store")
    return response
