"""The dashboard's security pieces: login sessions of named users, CSRF tokens and same-origin checks.

No third-party import here.

- **Users.** Each person logs in with their name and their own token (``nnforge users add NAME --role ROLE``
  prints it once; :class:`nnforge.govern.users.UserStore` keeps only a salted scrypt hash). There is no shared
  dashboard token.
- **Sessions.** A successful login gets a random session id (kept only in this process's memory) in an
  ``HttpOnly; SameSite=Strict`` cookie. Sessions expire after :data:`SESSION_IDLE_S` without a request, and
  :data:`SESSION_MAX_AGE_S` after login however busy (a stolen cookie is not good forever); they end at once
  when the user's token is rotated or the user is removed (the stored hash they logged in with changed).
- **CSRF.** Each session has its own random CSRF token, embedded in every form as a hidden field and compared
  in constant time on every POST; a POST must also come from the dashboard's own origin (``Origin``, or
  ``Referer`` when a browser sends no ``Origin``).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from nnforge.govern.users import User

__all__ = ["SESSION_IDLE_S", "SESSION_MAX_AGE_S", "Session", "SessionStore", "same_origin"]

SESSION_IDLE_S = 8 * 3600.0
"""A session unused for this long is forgotten (the user logs in again with their token)."""
SESSION_MAX_AGE_S = 24 * 3600.0
"""A session this old is forgotten even if it was used a moment ago."""
MAX_SESSIONS = 1000
"""At most this many live sessions; the least recently used one goes first."""


@dataclass
class Session:
    """One logged-in browser: who (authenticated ``via="session"``), its CSRF token, and the stored hash of the
    token the user logged in with (a rotated token or a removed user ends the session)."""

    id: str
    csrf: str
    user: User
    digest: str
    last_seen: float = field(default_factory=time.monotonic)
    created: float = field(default_factory=time.monotonic)

    def csrf_ok(self, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.csrf.encode(), str(given).encode())


class SessionStore:
    """Sessions of one dashboard process, in memory (a restart logs everyone out, by design)."""

    def __init__(self, idle_s: float = SESSION_IDLE_S, max_sessions: int = MAX_SESSIONS,
                 max_age_s: float = SESSION_MAX_AGE_S) -> None:
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self.max_sessions = max_sessions
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def create(self, user: User, digest: str) -> Session:
        now = time.monotonic()
        s = Session(id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32), user=user, digest=digest,
                    last_seen=now, created=now)
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                oldest = min(self._sessions.values(), key=lambda x: x.last_seen)
                del self._sessions[oldest.id]
            self._sessions[s.id] = s
        return s

    def get(self, session_id: str | None, current_digest: Callable[[str], str | None]) -> Session | None:
        """The live session with this id, or ``None`` (unknown, idle too long, too old, or its user's token
        changed since login: ``current_digest(name)`` is the stored hash now, ``None`` for a removed user)."""
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            s = self._sessions.get(session_id)
        if s is None:
            return None
        digest = current_digest(s.user.name)
        with self._lock:
            if (now - s.last_seen > self.idle_s or now - s.created > self.max_age_s or digest is None
                    or not hmac.compare_digest(s.digest, digest)):
                self._sessions.pop(session_id, None)
                return None
            s.last_seen = now
            return s

    def drop(self, session_id: str) -> None:
        with self._lock:
            self._sessions.pop(session_id, None)


def same_origin(origin: str | None, referer: str | None, host: str | None, scheme: str) -> bool:
    """Whether a state-changing request comes from the dashboard's own pages.

    Browsers send ``Origin`` with every cross-site or same-site POST; when it is absent (or ``null``) the
    ``Referer`` is used. A request with neither is refused: the dashboard's forms always send one of them.
    """
    if not host:
        return False
    expected = f"{scheme}://{host}".lower()
    if origin and origin != "null":
        return origin.lower().rstrip("/") == expected
    if referer:
        parts = urlsplit(referer)
        return f"{parts.scheme}://{parts.netloc}".lower() == expected
    return False
