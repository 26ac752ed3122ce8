"""What every dashboard page shares: the run folders (every path checked), the logged-in session, the CSRF and
origin checks of a form, and rendering a page or an error page."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse
from jinja2 import Environment

from nnforge import runs as run_schema
from nnforge.errors import NnforgeError
from nnforge.govern.dashboard._security import SessionStore, same_origin
from nnforge.govern.review import ReviewQueue
from nnforge.govern.users import UserStore

__all__ = ["RUN_ID", "COOKIE", "RunFolders", "Dashboard"]

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
"""What a run id in a URL may look like (``20261128-053421-148a00``); anything else is a 404."""
COOKIE = "nnforge_session"


class RunFolders:
    """The run folders under one directory, every path checked to stay inside it."""

    def __init__(self, runs_dir: Path) -> None:
        self.root = runs_dir.resolve()
        self._hashes: dict[tuple[str, int, int], str] = {}

    def sha256(self, path: Path) -> str:
        """The file's sha256, cached by path, size and modification time (pages check weights on every view)."""
        from nnforge.ledger import file_sha256

        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if key not in self._hashes:
            self._hashes[key] = file_sha256(path)
        return self._hashes[key]

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
        config, metrics = self.json(run_id, run_schema.CONFIG), self.json(run_id, run_schema.METRICS)
        recipe = config.get("recipe") if isinstance(config.get("recipe"), dict) else {}
        final = config.get("final_variant")
        acc = metrics.get(f"{final}_acc") if final else None
        return {"id": run_id, "created": str(config.get("created", ""))[:19].replace("T", " "),
                "recipe": (recipe or {}).get("name") or "", "final_variant": final or "",
                "accuracy": acc if isinstance(acc, (int, float)) else None,
                "status": "damaged" if "_error" in config else str(config.get("status") or ""),
                "has_report": self.file(run_id, run_schema.REPORT) is not None}

    def labels(self, run_id: str) -> list[str] | None:
        if self.folder(run_id) is None:
            return None
        labels = self.json(run_id, run_schema.CONFIG).get("label_names")
        return [str(x) for x in labels] if isinstance(labels, list) and labels else None


@dataclass
class Dashboard:
    """One dashboard's state, handed to each group of pages: where the ledger and runs are, the users,
    the open sessions and the page templates."""

    location: str
    runs: RunFolders
    users: UserStore
    sessions: SessionStore
    templates: Environment

    def session_of(self, request: Request) -> Any:
        """The request's logged-in session (``session.user`` is who), or ``None``."""
        return self.sessions.get(request.cookies.get(COOKIE), self.users.credential_digest)

    def page(self, request: Request, template: str, http_status: int = 200, session: Any = None,
             **ctx: Any) -> HTMLResponse:
        html = self.templates.get_template(template).render(session=session, path=request.url.path, **ctx)
        return HTMLResponse(html, status_code=http_status)

    def error(self, request: Request, status: int, message: str, session: Any = None) -> HTMLResponse:
        return self.page(request, "error.j2", status, session=session, status_code=status, message=message)

    @staticmethod
    def to_login() -> RedirectResponse:
        return RedirectResponse("/login", status_code=303)

    def post_refusal(self, request: Request, session: Any, csrf: str | None) -> HTMLResponse | None:
        """Why a state-changing request is refused (a 403 page), or ``None`` when it may go on."""
        if session is None:
            return self.error(request, 403, "not logged in: log in with your name and token first")
        if not same_origin(request.headers.get("origin"), request.headers.get("referer"),
                           request.headers.get("host"), request.url.scheme):
            return self.error(request, 403, "cross-origin request refused: the form must be sent from the "
                                            "dashboard's own pages", session)
        if not session.csrf_ok(csrf):
            return self.error(request, 403, "missing or invalid CSRF token: reload the page and send the form "
                                            "again", session)
        return None

    def open_queue(self, request: Request, session: Any) -> ReviewQueue | HTMLResponse:
        """The review queue, or a 503 page when the ledger cannot hold one (e.g. a read-only export)."""
        try:
            return ReviewQueue.open(self.location)
        except NnforgeError as exc:
            return self.error(request, 503, str(exc), session)


