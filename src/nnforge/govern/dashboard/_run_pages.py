"""The run pages: the list of runs, one run (config, metrics, files, artifacts, promotions), its report and
its files (never rendered by the browser except as plain text or JSON)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from nnforge import runs as run_schema
from nnforge.errors import NnforgeError
from nnforge.govern.dashboard._context import Dashboard
from nnforge.govern.integrity import RunCheck, check_run
from nnforge.govern.promotion import promotions
from nnforge.ledger import Event, Ledger

__all__ = ["run_pages", "REPORT_CSP"]

REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; " \
             "frame-ancestors 'none'; base-uri 'none'; sandbox"
"""Reports are self-contained HTML with inline styles and data: images; nothing else may load or run."""
_TEXT_TYPES = {".json": "application/json", ".xml": "text/plain", ".txt": "text/plain", ".yaml": "text/plain",
               ".yml": "text/plain", ".jsonl": "text/plain", ".csv": "text/plain"}


def _checked(d: Dashboard, led: Ledger, run_id: str, events: list[Event]) -> RunCheck | None:
    """The run's files checked against the ledger, or ``None`` when the ledger did not record the run or its
    folder cannot be read (the page then shows no figure: nothing vouches for them)."""
    folder = d.runs.folder(run_id)
    if folder is None or not any(e.kind == "run.started" for e in events):
        return None
    try:
        return check_run(folder, led, events=events, sha256=d.runs.sha256)
    except NnforgeError:
        return None


def _as_recorded(row: dict[str, Any], check: RunCheck | None) -> dict[str, Any]:
    """A runs-page row with the status and accuracy the ledger gives (never a figure from the run's files)."""
    final = row.get("final_variant")
    acc = check.metrics.get(f"{final}_acc") if check is not None and final else None
    status = check.status if check is not None else (row["status"] if row["status"] == "damaged" else "unrecorded")
    return {**row, "status": status, "accuracy": acc if isinstance(acc, (int, float)) else None,
            "altered": check.altered_files if check is not None else []}


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
        by_run: dict[str | None, list[Event]] = {}
        try:
            standing = {p["run"] for p in promotions(led) if p["revoked"] is None}
            check = led.verify()
            for e in led.events():
                by_run.setdefault(e.run, []).append(e)
            rows = [_as_recorded(r, _checked(d, led, r["id"], by_run.get(r["id"], []))) for r in rows]
        except NnforgeError:
            standing, check = set(), None
            rows = [_as_recorded(r, None) for r in rows]
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
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        led = Ledger.open(d.location)
        checked = None
        try:
            events = led.events(run=run_id)
            proms = promotions(led, run_id)
            checked = _checked(d, led, run_id, events)
        except NnforgeError as exc:
            events, proms = [], []
            config.setdefault("_ledger_error", str(exc))
        finally:
            led.close()
        artifacts = [e for e in events if e.kind == "artifact.written"]
        recipe = config.get("recipe") if isinstance(config.get("recipe"), dict) else {}
        # figures as the ledger recorded them: a value edited into metrics.json is never shown
        metrics = checked.metrics if checked is not None else {}
        altered = {str(folder / f) for f in files} & set(checked.altered_files if checked else [])
        return d.page(request, "run.j2", session=s, run=_as_recorded(runs.summary(run_id), checked), config=config,
                      recipe=recipe or {}, metrics=metrics, files=files, events=events, artifacts=artifacts,
                      promotions=proms, labels=runs.labels(run_id), check=checked,
                      altered_files=sorted(p[len(str(folder)) + 1:] for p in altered))

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
