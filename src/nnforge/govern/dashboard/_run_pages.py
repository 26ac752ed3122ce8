"""The run pages: the list of runs, one run (config, metrics, files, artifacts, promotions), its report and
its files (never rendered by the browser except as plain text or JSON)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from nnforge import runs as run_schema
from nnforge.errors import NnforgeError
from nnforge.govern.dashboard._context import Dashboard
from nnforge.govern.promotion import promotions
from nnforge.ledger import Ledger

__all__ = ["run_pages", "REPORT_CSP"]

REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; " \
             "frame-ancestors 'none'; base-uri 'none'; sandbox"
"""Reports are self-contained HTML with inline styles and data: images; nothing else may load or run."""
_TEXT_TYPES = {".json": "application/json", ".xml": "text/plain", ".txt": "text/plain", ".yaml": "text/plain",
               ".yml": "text/plain", ".jsonl": "text/plain", ".csv": "text/plain"}


def run_pages(d: Dashboard) -> APIRouter:
    """``/``, ``/runs/{id}``, ``/runs/{id}/report`` and ``/runs/{id}/files/{name}``."""
    router = APIRouter()
    runs = d.runs

    @router.get("/", response_class=HTMLResponse)
    def runs_page(request: Request) -> Response:
        s = d.session_of(request)
        if s is None:
            return d.to_login()
        rows = [runs.summary(r) for r in runs.ids()]
        led = Ledger.open(d.location)
        try:
            standing = {p["run"] for p in promotions(led) if p["revoked"] is None}
            check = led.verify()
        except NnforgeError:
            standing, check = set(), None
        finally:
            led.close()
        for r in rows:
            r["promoted"] = r["id"] in standing
        return d.page(request, "runs.j2", session=s, runs=rows, runs_dir=str(runs.root), check=check)

    @router.get("/runs/{run_id}", response_class=HTMLResponse)
    def run_page(request: Request, run_id: str) -> Response:
        s = d.session_of(request)
        if s is None:
            return d.to_login()
        folder = runs.folder(run_id)
        if folder is None:
            return d.error(request, 404, f"no run {run_id!r} under {runs.root}", s)
        config = runs.json(run_id, run_schema.CONFIG)
        metrics = runs.json(run_id, run_schema.METRICS)
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        led = Ledger.open(d.location)
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
        return d.page(request, "run.j2", session=s, run=runs.summary(run_id), config=config, recipe=recipe or {},
                      metrics=metrics, files=files, events=events, artifacts=artifacts, promotions=proms,
                      labels=runs.labels(run_id))

    @router.get("/runs/{run_id}/report")
    def report(request: Request, run_id: str) -> Response:
        s = d.session_of(request)
        if s is None:
            return d.to_login()
        path = runs.file(run_id, run_schema.REPORT)
        if path is None:
            return d.error(request, 404, f"run {run_id!r} has no report.html", s)
        return FileResponse(path, media_type="text/html; charset=utf-8",
                            headers={"Content-Security-Policy": REPORT_CSP})

    @router.get("/runs/{run_id}/files/{name:path}")
    def run_file(request: Request, run_id: str, name: str) -> Response:
        s = d.session_of(request)
        if s is None:
            return d.to_login()
        path = runs.file(run_id, name)
        if path is None:
            return d.error(request, 404, f"run {run_id!r} has no file {name!r}", s)
        media = _TEXT_TYPES.get(path.suffix.lower())
        headers = {"Content-Security-Policy": "default-src 'none'; sandbox"}
        if media is None:  # weights, HTML, anything else: a download, never rendered by the browser
            return FileResponse(path, media_type="application/octet-stream", filename=path.name, headers=headers)
        return FileResponse(path, media_type=media, headers=headers)

    return router
