"""The dashboard's security pieces: the access token, login sessions, CSRF tokens and same-origin checks.

No third-party import here, so that ``nnforge dashboard token`` works without the dashboard extra.

- **Token.** ``nnforge dashboard token`` draws 256 random bits, prints them once and stores only their SHA-256
  in a file created with mode 0600 (default ``.nnforge/dashboard.token``). Logging in compares the SHA-256 of
  what was typed with :func:`hmac.compare_digest`. Creating a new token invalidates the old one and every
  session opened with it.
- **Sessions.** A successful login gets a random session id (kept only in this process's memory) in an
  ``HttpOnly; SameSite=Strict`` cookie. Sessions expire after :data:`SESSION_IDLE_S` without a request, and
  :data:`SESSION_MAX_AGE_S` after login however busy (a stolen cookie is not good forever).
- **CSRF.** Each session has its own random CSRF token, embedded in every form as a hidden field and compared
  in constant time on every POST; a POST must also come from the dashboard's own origin (``Origin``, or
  ``Referer`` when a browser sends no ``Origin``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from nnforge.errors import ConfigError, IntegrityError, check_output_path

__all__ = ["DEFAULT_TOKEN_FILE", "SESSION_IDLE_S", "SESSION_MAX_AGE_S", "new_token", "token_fingerprint", "check_token", "Session",
           "SessionStore", "same_origin"]

DEFAULT_TOKEN_FILE = Path(".nnforge") / "dashboard.token"
SESSION_IDLE_S = 8 * 3600.0
"""A session unused for this long is forgotten (the user logs in again with the token)."""
SESSION_MAX_AGE_S = 24 * 3600.0
"""A session this old is forgotten even if it was used a moment ago."""
MAX_SESSIONS = 1000
"""At most this many live sessions; the least recently used one goes first."""


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def new_token(token_file: str | os.PathLike[str] = DEFAULT_TOKEN_FILE) -> str:
    """Create a new dashboard token, store its SHA-256 in ``token_file`` (mode 0600) and return the token.

    The token itself is never written anywhere: show it to the user once. Any earlier token stops working.
    """
    path = Path(token_file)
    check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    doc = json.dumps({"sha256": _sha256(token), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(doc + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)  # in case a umask or filesystem widened it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return token


def token_fingerprint(token_file: str | os.PathLike[str]) -> str:
    """The stored SHA-256 of the current token.

    Raises:
        ConfigError: there is no token file yet (create one with ``nnforge dashboard token``).
        IntegrityError: the file is not what ``new_token`` writes.
    """
    path = Path(token_file)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"dashboard token file {path} does not exist: create a token with "
                          "'nnforge dashboard token'") from None
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"dashboard token file {path} is unreadable ({exc}); create a new token with "
                             "'nnforge dashboard token'") from None
    digest = doc.get("sha256") if isinstance(doc, dict) else None
    if not isinstance(digest, str) or len(digest) != 64:
        raise IntegrityError(f"dashboard token file {path} holds no sha256; create a new token with "
                             "'nnforge dashboard token'")
    return digest


def check_token(token_file: str | os.PathLike[str], given: str | None) -> bool:
    """Whether ``given`` is the current token (constant-time comparison of SHA-256 digests)."""
    if not given:
        return False
    return hmac.compare_digest(_sha256(given), token_fingerprint(token_file))


@dataclass
class Session:
    """One logged-in browser: its CSRF token, and the token fingerprint it logged in with."""

    id: str
    csrf: str
    fingerprint: str
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

    def create(self, fingerprint: str) -> Session:
        now = time.monotonic()
        s = Session(id=secrets.token_urlsafe(32), csrf=secrets.token_urlsafe(32), fingerprint=fingerprint,
                    last_seen=now, created=now)
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                oldest = min(self._sessions.values(), key=lambda x: x.last_seen)
                del self._sessions[oldest.id]
            self._sessions[s.id] = s
        return s

    def get(self, session_id: str | None, fingerprint: str) -> Session | None:
        """The live session with this id, or ``None`` (unknown, idle too long, too old, or opened with an older
        token)."""
        if not session_id:
            return None
        now = time.monotonic()
        with self._lock:
            s = self._sessions.get(session_id)
            if s is None:
                return None
            if (now - s.last_seen > self.idle_s or now - s.created > self.max_age_s
                    or not hmac.compare_digest(s.fingerprint, fingerprint)):
                del self._sessions[session_id]
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
