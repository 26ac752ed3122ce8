"""The login and logout pages: a user's name and token log in (a session cookie), failed tries are rate-limited."""

from __future__ import annotations

import collections
import hmac
import threading
import time

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from nnforge.govern.dashboard._context import COOKIE, Dashboard
from nnforge.govern.dashboard._security import same_origin
from nnforge.govern.users import AccessDenied

__all__ = ["login_pages"]

_LOGIN_FAILURES_PER_MINUTE = 10


def login_pages(d: Dashboard) -> APIRouter:
    """``GET/POST /login``, ``POST /logout`` and ``/favicon.ico``."""
    router = APIRouter()
    failures: collections.deque[float] = collections.deque()
    failures_lock = threading.Lock()

    @router.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)  # no icon; answered so browsers do not log a 404 on every page

    @router.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> Response:
        if d.session_of(request) is not None:
            return RedirectResponse("/", status_code=303)
        return d.page(request, "login.j2", configured=bool(d.users.users()))

    @router.post("/login", response_class=HTMLResponse)
    def login(request: Request, username: str = Form(""), token: str = Form("")) -> Response:
        if not same_origin(request.headers.get("origin"), request.headers.get("referer"),
                           request.headers.get("host"), request.url.scheme):
            return d.error(request, 403, "cross-origin login refused")
        now = time.monotonic()
        if not d.users.users():
            return d.error(request, 503, f"no users in {d.users.path}: create the first admin with "
                                         "'nnforge users add NAME --role admin'")
        try:  # a valid token always logs in: failed guesses cannot lock its owner out
            user = d.users.authenticate(token, via="session")
            ok = hmac.compare_digest(user.name.encode(), username.strip().encode())
        except AccessDenied:
            ok = False
        if not ok:
            with failures_lock:
                while failures and now - failures[0] > 60:
                    failures.popleft()
                failures.append(now)
                if len(failures) > _LOGIN_FAILURES_PER_MINUTE:
                    return d.error(request, 429, "too many failed logins in the last minute; wait and try again")
            return d.page(request, "login.j2", 401, configured=True, failed=True)
        s = d.sessions.create(user, d.users.credential_digest(user.name) or "")
        response = RedirectResponse("/", status_code=303)
        response.set_cookie(COOKIE, s.id, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                            path="/")
        return response

    @router.post("/logout")
    def logout(request: Request, csrf: str = Form("")) -> Response:
        s = d.session_of(request)
        refused = d.post_refusal(request, s, csrf)
        if refused is not None:
            return refused
        d.sessions.drop(s.id)
        response = d.to_login()
        response.delete_cookie(COOKIE, path="/")
        return response

    return router
