"""The dashboard's web application: server-rendered pages over the ledger, the run folders and the review queue.

Pages (all need a logged-in session): runs (``/``), one run (``/runs/{id}``) with its report
(``/runs/{id}/report``) and files (``/runs/{id}/files/{name}``), lineage of an artifact (``/lineage``), ledger
events and chain verification (``/ledger``), the review queue (``/review``) and one item (``/review/{id}``) with
its approve/override form (``POST /review/{id}/decide``). See :mod:`nnforge.ledger.dashboard._security` for the
token, session and CSRF rules.

Everything shown comes from the ledger and the run folders at request time; untrusted text (model inputs, notes,
labels, file names) is HTML-escaped by Jinja2's autoescape. This is the only module that imports FastAPI.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nnforge import runs as run_schema
from nnforge.errors import ConfigError, IntegrityError, MissingDependencyError, NnforgeError
from nnforge.ledger._ledger import Ledger
from nnforge.ledger._lineage import lineage as build_lineage
from nnforge.ledger.dashboard._security import (
    DEFAULT_TOKEN_FILE,
    SessionStore,
    check_token,
    same_origin,
    token_fingerprint,
)
from nnforge.ledger.promotion import promotions
from nnforge.ledger.review import STATUSES, ReviewQueue

try:
    from fastapi import FastAPI, Form, Request
    from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
    from jinja2 import Environment, FileSystemLoader
    from starlette.middleware.trustedhost import TrustedHostMiddleware
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependencyError(f"the dashboard needs FastAPI, Jinja2 and python-multipart ({exc.name} is "
                                 "missing): pip install 'nnforge[dashboard]'") from exc

__all__ = ["create_app", "RUN_ID", "LOOPBACK_HOSTS", "COOKIE"]

log = logging.getLogger(__name__)
RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
"""What a run id in a URL may look like (``20261128-053421-148a00``); anything else is a 404."""
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]", "::1")
"""Host headers accepted by default: a page on another name pointing at 127.0.0.1 (DNS rebinding) is refused."""
COOKIE = "nnforge_session"

PAGE_CSP = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; form-action 'self'; " \
           "frame-ancestors 'none'; base-uri 'none'"
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; " \
             "frame-ancestors 'none'; base-uri 'none'; sandbox"
"""Reports are self-contained HTML with inline styles and data: images; nothing else may load or run."""

_TEXT_TYPES = {".json": "application/json", ".xml": "text/plain", ".txt": "text/plain", ".yaml": "text/plain",
               ".yml": "text/plain", ".jsonl": "text/plain", ".csv": "text/plain"}
_LOGIN_FAILURES_PER_MINUTE = 10
_MAX_EVENTS_SHOWN = 500


_MAX_BODY_BYTES = 64 << 10
_MAX_REVIEWER, _MAX_NOTE = 200, 10_000


class _Runs:
    """The run folders under one directory, every path checked to stay inside it."""

    def __init__(self, runs_dir: Path) -> None:
        self.root = runs_dir.resolve()

    def folder(self, run_id: str) -> Path | None:
        """The folder of ``run_id``, or ``None`` when the id is malformed, escapes the root or does not exist."""
        if not RUN_ID.match(run_id):
            return None
        path = (self.root / run_id).resolve()
        if not path.is_relative_to(self.root) or path == self.root or not path.is_dir():
            return None
        return path

    def file(self, run_id: str, name: str) -> Path | None:
        """A regular file inside the run folder (``name`` may have subfolders), or ``None``."""
        folder = self.folder(run_id)
        return None if folder is None else run_schema.run_file(folder, name)

    def json(self, run_id: str, name: str) -> dict[str, Any]:
        """The run's config, metrics or sections as :mod:`nnforge.runs` reads them; ``{}`` when the run or the
        file is absent, and ``{"_error": why}`` when the file fails its checks (the page shows why)."""
        folder = self.folder(run_id)
        if folder is None:
            return {}
        read = {run_schema.CONFIG: run_schema.read_config, run_schema.METRICS: run_schema.read_metrics,
                run_schema.SECTIONS: run_schema.read_sections}
        try:
            return read[name](folder)
        except NnforgeError as exc:
            return {"_error": str(exc)}

    def ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted((p.name for p in self.root.iterdir() if p.is_dir() and self.folder(p.name) is not None),
                      reverse=True)

    def summary(self, run_id: str) -> dict[str, Any]:
        folder = self.folder(run_id)
        assert folder is not None
        config, metrics = self.json(run_id, "config.json"), self.json(run_id, "metrics.json")
        recipe = config.get("recipe") if isinstance(config.get("recipe"), dict) else {}
        final = config.get("final_variant")
        acc = metrics.get(f"{final}_acc") if final else None
        return {"id": run_id, "created": str(config.get("created", ""))[:19].replace("T", " "),
                "recipe": (recipe or {}).get("name") or "", "final_variant": final or "",
                "accuracy": acc if isinstance(acc, (int, float)) else None,
                "has_report": self.file(run_id, "report.html") is not None}

    def labels(self, run_id: str) -> list[str] | None:
        folder = self.folder(run_id)
        if folder is None:
            return None
        labels = self.json(run_id, "config.json").get("label_names")
        return [str(x) for x in labels] if isinstance(labels, list) and labels else None


def create_app(ledger_location: str | os.PathLike[str], runs_dir: str | os.PathLike[str] = "runs",
               token_file: str | os.PathLike[str] = DEFAULT_TOKEN_FILE, *,
               allowed_hosts: Sequence[str] | None = LOOPBACK_HOSTS) -> Any:
    """Build the dashboard's FastAPI application.

    Args:
        ledger_location: the ledger (SQLite path); it also holds the review queue.
        runs_dir: the folder holding ``runs/<run-id>/``.
        token_file: the hashed token written by ``nnforge dashboard token`` (read at every login and request,
            so a new token takes effect at once and logs out sessions opened with the old one).
        allowed_hosts: accepted ``Host`` header names (default: loopback names only, which stops DNS-rebinding
            pages from reaching a local dashboard); ``None`` accepts any host (``--allow-remote``).

    Returns:
        A ``fastapi.FastAPI`` application; serve it with uvicorn.
    """
    location = str(ledger_location)
    runs = _Runs(Path(runs_dir))
    tokens = Path(token_file)
    sessions = SessionStore()
    failures: collections.deque[float] = collections.deque()
    failures_lock = threading.Lock()
    templates = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True,
                            trim_blocks=True, lstrip_blocks=True)

    app = FastAPI(title="nnforge dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Response:
        """Refuse request bodies over a few KiB before anything parses them (forms here are tiny)."""
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return Response("a request body needs a Content-Length", status_code=411, media_type="text/plain")
            if int(length) > _MAX_BODY_BYTES:
                return Response(f"request body over {_MAX_BODY_BYTES} bytes", status_code=413,
                                media_type="text/plain")
        response: Response = await call_next(request)
        return response

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Response:
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

    # --- helpers -----------------------------------------------------------------------------------------

    def fingerprint() -> str | None:
        try:
            return token_fingerprint(tokens)
        except NnforgeError:
            return None

    def session_of(request: Request) -> Any:
        fp = fingerprint()
        return sessions.get(request.cookies.get(COOKIE), fp) if fp else None

    def page(request: Request, template: str, http_status: int = 200, session: Any = None,
             **ctx: Any) -> HTMLResponse:
        html = templates.get_template(template).render(session=session, path=request.url.path, **ctx)
        return HTMLResponse(html, status_code=http_status)

    def error(request: Request, status: int, message: str, session: Any = None) -> HTMLResponse:
        return page(request, "error.j2", status, session=session, status_code=status, message=message)

    def to_login() -> RedirectResponse:
        return RedirectResponse("/login", status_code=303)

    def post_refusal(request: Request, session: Any, csrf: str | None) -> HTMLResponse | None:
        """Why a state-changing request is refused (a 403 page), or ``None`` when it may go on."""
        if session is None:
            return error(request, 403, "not logged in: log in with the dashboard token first")
        if not same_origin(request.headers.get("origin"), request.headers.get("referer"),
                           request.headers.get("host"), request.url.scheme):
            return error(request, 403, "cross-origin request refused: the form must be sent from the dashboard's "
                                       "own pages", session)
        if not session.csrf_ok(csrf):
            return error(request, 403, "missing or invalid CSRF token: reload the page and send the form again",
                         session)
        return None

    def open_queue(request: Request, session: Any) -> ReviewQueue | HTMLResponse:
        """The review queue, or a 503 page when the ledger cannot hold one (e.g. a read-only export)."""
        try:
            return ReviewQueue.open(location)
        except NnforgeError as exc:
            return error(request, 503, str(exc), session)

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)  # no icon; answered so browsers do not log a 404 on every page

    # --- login ---------------------------------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> Response:
        if session_of(request) is not None:
            return RedirectResponse("/", status_code=303)
        return page(request, "login.j2", configured=fingerprint() is not None)

    @app.post("/login", response_class=HTMLResponse)
    def login(request: Request, token: str = Form("")) -> Response:
        if not same_origin(request.headers.get("origin"), request.headers.get("referer"),
                           request.headers.get("host"), request.url.scheme):
            return error(request, 403, "cross-origin login refused")
        now = time.monotonic()
        fp = fingerprint()
        if fp is None:
            return error(request, 503, f"no dashboard token is configured ({tokens}): create one with "
                                       "'nnforge dashboard token'")
        if not check_token(tokens, token):  # a valid token always logs in: failed guesses cannot lock its owner out
            with failures_lock:
                while failures and now - failures[0] > 60:
                    failures.popleft()
                failures.append(now)
                if len(failures) > _LOGIN_FAILURES_PER_MINUTE:
                    return error(request, 429, "too many failed logins in the last minute; wait and try again")
            return page(request, "login.j2", 401, configured=True, failed=True)
        s = sessions.create(fp)
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, s.id, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                            path="/")
        return response

    @app.post("/logout")
    def logout(request: Request, csrf: str = Form("")) -> Response:
        s = session_of(request)
        refused = post_refusal(request, s, csrf)
        if refused is not None:
            return refused
        sessions.drop(s.id)
        response = to_login()
        response.delete_cookie(COOKIE, path="/")
        return response

    # --- runs ----------------------------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def runs_page(request: Request) -> Response:
        s = session_of(request)
        if s is None:
            return to_login()
        rows = [runs.summary(r) for r in runs.ids()]
        led = Ledger.open(location)
        try:
            standing = {p["run"] for p in promotions(led) if p["revoked"] is None}
            check = led.verify()
        except NnforgeError:
            standing, check = set(), None
        finally:
            led.close()
        for r in rows:
            r["promoted"] = r["id"] in standing
        return page(request, "runs.j2", session=s, runs=rows, runs_dir=str(runs.root), check=check)

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> Response:
        s = session_of(request)
        if s is None:
            return to_login()
        folder = runs.folder(run_id)
        if folder is None:
            return error(request, 404, f"no run {run_id!r} under {runs.root}", s)
        config = runs.json(run_id, "config.json")
        metrics = runs.json(run_id, "metrics.json")
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        led = Ledger.open(location)
        try:
            events = led.events(run=run_id)
            proms = promotions(led, run_id)
        except NnforgeError as exc:
            events, proms = [], []
            config.setdefault("_ledger_error", str(exc))
        finally:
            led.close()
        artifacts = [e for e in events if e.kind == "artifact.written"]
        recipe = config.get("recipe") if isinstance(config.get("recipe"), dict) else {}
        return page(request, "run.j2", session=s, run=runs.summary(run_id), config=config, recipe=recipe or {},
                    metrics=metrics, files=files, events=events, artifacts=artifacts, promotions=proms,
                    labels=runs.labels(run_id))

    @app.get("/runs/{run_id}/report")
    def report(request: Request, run_id: str) -> Response:
        s = session_of(request)
        if s is None:
            return to_login()
        path = runs.file(run_id, "report.html")
        if path is None:
            return error(request, 404, f"run {run_id!r} has no report.html", s)
        return FileResponse(path, media_type="text/html; charset=utf-8",
                            headers={"Content-Security-Policy": REPORT_CSP})

    @app.get("/runs/{run_id}/files/{name:path}")
    def run_file(request: Request, run_id: str, name: str) -> Response:
        s = session_of(request)
        if s is None:
            return to_login()
        path = runs.file(run_id, name)
        if path is None:
            return error(request, 404, f"run {run_id!r} has no file {name!r}", s)
        media = _TEXT_TYPES.get(path.suffix.lower())
        headers = {"Content-Security-Policy": "default-src 'none'; sandbox"}
        if media is None:  # weights, HTML, anything else: a download, never rendered by the browser
            return FileResponse(path, media_type="application/octet-stream", filename=path.name, headers=headers)
        return FileResponse(path, media_type=media, headers=headers)

    # --- ledger --------------------------------------------------------------------------------------------

    @app.get("/lineage", response_class=HTMLResponse)
    def lineage_page(request: Request, artifact: str = "") -> Response:
        s = session_of(request)
        if s is None:
            return to_login()
        if not artifact:
            return page(request, "lineage.j2", session=s, artifact="", lineage=None)
        if ":" not in artifact and not re.fullmatch(r"[0-9a-fA-F]{8,64}", artifact):
            # the library also accepts a file path; over the web only RUN_ID:NAME or a sha256 are accepted, so
            # a URL can never make the server hash an arbitrary file
            return error(request, 400, f"artifact {artifact!r}: give RUN_ID:NAME (e.g. 20261128-053421-148a00:"
                                       "model:int8) or a sha256 (at least 8 hex digits)", s)
        led = Ledger.open(location)
        try:
            lin = build_lineage(led, artifact, files=False)  # a URL never makes the server read a path
        except NnforgeError as exc:
            return error(request, 404, str(exc), s)
        finally:
            led.close()
        return page(request, "lineage.j2", session=s, artifact=artifact, lineage=lin)

    @app.get("/ledger", response_class=HTMLResponse)
    def ledger_page(request: Request, run: str = "", kind: str = "") -> Response:
        s = session_of(request)
        if s is None:
            return to_login()
        led = Ledger.open(location)
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
        return page(request, "ledger.j2", session=s, check=check, events=events[-_MAX_EVENTS_SHOWN:], total=total,
                    events_error=events_error, run=run, kind=kind, location=shown)

    # --- review --------------------------------------------------------------------------------------------

    @app.get("/review", response_class=HTMLResponse)
    def review_page(request: Request, status: str = "open") -> Response:
        s = session_of(request)
        if s is None:
            return to_login()
        if status not in (*STATUSES, "all"):
            return error(request, 400, f"status {status!r} is not one of {[*STATUSES, 'all']}", s)
        q = open_queue(request, s)
        if isinstance(q, HTMLResponse):
            return q
        try:
            items = q.list(None if status == "all" else status)
            stats = q.stats()
        finally:
            q.close()
        labels = {i.run: runs.labels(i.run) for i in items}
        return page(request, "review.j2", session=s, items=items, stats=stats, status=status,
                    statuses=[*STATUSES, "all"], labels=labels)

    @app.get("/review/{item_id}", response_class=HTMLResponse)
    def item_page(request: Request, item_id: int) -> Response:
        s = session_of(request)
        if s is None:
            return to_login()
        if not 1 <= item_id < 2**63:
            return error(request, 404, f"no review item {item_id}", s)
        q = open_queue(request, s)
        if isinstance(q, HTMLResponse):
            return q
        try:
            item = q.get(item_id)
        except ConfigError as exc:
            return error(request, 404, str(exc), s)
        finally:
            q.close()
        return page(request, "item.j2", session=s, item=item, labels=runs.labels(item.run))

    @app.post("/review/{item_id}/decide", response_class=HTMLResponse)
    def decide(request: Request, item_id: int, csrf: str = Form(""), reviewer: str = Form(""),
               action: str = Form(""), override_label: str = Form(""), note: str = Form("")) -> Response:
        s = session_of(request)
        refused = post_refusal(request, s, csrf)
        if refused is not None:
            return refused
        if action not in ("approve", "override"):
            return error(request, 400, f"action {action!r} is not one of ['approve', 'override']", s)
        if not 1 <= item_id < 2**63:
            return error(request, 404, f"no review item {item_id}", s)
        if len(reviewer) > _MAX_REVIEWER or len(note) > _MAX_NOTE:
            return error(request, 400, f"a reviewer name holds at most {_MAX_REVIEWER} characters and a note at most "
                                       f"{_MAX_NOTE}", s)
        q = open_queue(request, s)
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
            q.decide(item_id, reviewer=reviewer, approve=action == "approve",
                     override_label=override_label if action == "override" else None, note=note,
                     allowed_labels=labels)
        except NnforgeError as exc:
            return error(request, 400, str(exc), s)
        finally:
            q.close()
        return RedirectResponse(f"/review/{item_id}", status_code=303)

    return app
