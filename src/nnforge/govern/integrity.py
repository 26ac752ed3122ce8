"""Integrity at every load: a run's files are checked against the sha256 its ledger recorded before anything
uses them.

A run's artifacts are the files its steps recorded with ``artifact.written`` events (weights, the OOD guard,
predictions, sensitivity, …); ``metrics.json`` is compared with the figures the ``step.finished`` events
recorded. Every path that uses a run — :func:`nnforge.load_run`, ``nnforge predict / embed / evaluate / docs``
and the dashboard — calls :func:`verify_run` (or :func:`check_run`) and refuses an altered run with an
:class:`~nnforge.errors.IntegrityError` naming the file, unless the caller allows modified files: that choice is
recorded as an ``integrity.overridden`` event, so the record says which altered bytes were used.

>>> from nnforge.govern.integrity import verify_run
>>> verify_run("runs/20261128-053421-148a00", use="predict").status  # doctest: +SKIP
'finished'
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnforge import runs
from nnforge.errors import IntegrityError, NnforgeError
from nnforge.ledger import Event, Ledger, file_sha256

__all__ = ["AlteredFile", "RunCheck", "run_status", "records_run", "find_ledger", "check_run", "verify_run", "OVERRIDE_EVENT",
           "RUN_STATUSES"]

log = logging.getLogger(__name__)

OVERRIDE_EVENT = "integrity.overridden"
"""The event that records a use of a run whose files the ledger does not vouch for (``--allow-modified``)."""
RUN_STATUSES = ("finished", "failed", "interrupted", "running", "altered")
_REWRITTEN = ("report", "suite:")
"""Artifacts that later recorded commands legitimately rewrite (``nnforge report`` re-renders report.html,
``nnforge evaluate`` rewrites a suite's result, each under its own event and hash): not checked here; the
promotion gate checks suite results against their ``suite.evaluated`` event."""


@dataclass(frozen=True)
class AlteredFile:
    """A recorded file whose bytes are not the ones the ledger recorded (``found`` is None when it is missing)."""

    name: str
    path: str
    recorded: str
    found: str | None
    seq: int | None = None

    def describe(self) -> str:
        now = "is missing" if self.found is None else f"has sha256 {self.found[:12]}…"
        where = f" (event #{self.seq})" if self.seq is not None else ""
        return f"{self.path} {now}, the ledger recorded {self.recorded[:12]}…{where}"


@dataclass(frozen=True)
class RunCheck:
    """What checking a run folder against its ledger found."""

    run_id: str
    run_dir: Path
    ledger: str | None  # the ledger that recorded the run (None: no ledger found did)
    status: str  # one of RUN_STATUSES
    recorded_status: str  # the status the events give, ignoring alterations
    altered: list[AlteredFile] = field(default_factory=list)
    metrics_altered: list[str] = field(default_factory=list)
    checked: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)  # the figures as the ledger recorded them
    recorded: dict[str, str] = field(default_factory=dict)  # each checked file (run folder / path) -> its sha256

    @property
    def ok(self) -> bool:
        """Whether every recorded file is the bytes the ledger recorded (and a ledger recorded the run)."""
        return self.ledger is not None and not self.altered and not self.metrics_altered

    @property
    def altered_files(self) -> list[str]:
        """The run-folder files that differ from the record (``metrics.json`` included when a figure does)."""
        return [a.path for a in self.altered] + ([str(self.run_dir / runs.METRICS)] if self.metrics_altered else [])

    def problem(self) -> str:
        """One sentence naming each altered file, or why the run cannot be checked."""
        if self.ledger is None:
            return (f"no ledger records run {self.run_id}, so its files cannot be checked; pass the ledger the run "
                    "wrote to (--ledger or NNFORGE_LEDGER)")
        parts = [a.describe() for a in self.altered]
        if self.metrics_altered:
            shown = ", ".join(self.metrics_altered[:5]) + (" …" if len(self.metrics_altered) > 5 else "")
            parts.append(f"{self.run_dir / runs.METRICS} shows figures the ledger recorded otherwise ({shown})")
        return "; ".join(parts)


def run_status(events: list[Event], config: dict[str, Any] | None = None) -> str:
    """``finished``, ``failed``, ``interrupted`` (Ctrl-C or a stop signal) or ``running`` from the run's events
    (the newest end event wins; the folder's own status when the ledger has none, a run whose process is gone
    being ``interrupted``)."""
    for e in reversed(events):
        if e.kind == "run.finished":
            return "finished"
        if e.kind == "run.failed":
            error = str(e.data.get("error", ""))
            if e.data.get("interrupted") is True or error.startswith(("KeyboardInterrupt", "SystemExit")):
                return "interrupted"
            return "failed"
    status = runs.status_of(config) if config else "running"  # a dead process's "running" is "interrupted"
    return status if status in RUN_STATUSES else "running"


def records_run(location: str, run_id: str) -> bool:
    """Whether the ledger at ``location`` records ``run_id`` as started (False when it cannot be opened)."""
    try:
        led = Ledger.open(location)
    except NnforgeError:
        return False
    try:
        return bool(led.events(run=run_id, kind="run.started"))
    except NnforgeError:
        return False
    finally:
        led.close()


def find_ledger(run_dir: str | os.PathLike[str], ledger: str | os.PathLike[str] | None = None) -> str | None:
    """The ledger that recorded the run in ``run_dir``: the one given, ``NNFORGE_LEDGER``, ``.nnforge/ledger.db``
    here, or the one the run's config.json names — the first that holds the run's ``run.started`` event."""
    config = runs.read_config(run_dir)
    run_id = str(config.get("run_id") or Path(run_dir).name)
    recorded = config.get("ledger")
    candidates = [str(ledger) if ledger is not None else None, os.environ.get("NNFORGE_LEDGER"),
                  os.path.join(".nnforge", "ledger.db"), recorded if isinstance(recorded, str) else None]
    for loc in dict.fromkeys(c for c in candidates if c):
        if ("://" in loc or os.path.isfile(loc)) and records_run(loc, run_id):
            return loc
    return None


def _newest_artifacts(events: list[Event]) -> dict[str, Event]:
    newest: dict[str, Event] = {}
    for e in events:
        if e.kind == "artifact.written" and isinstance(e.data.get("path"), str) \
                and not str(e.data.get("name", "")).startswith(_REWRITTEN):
            newest[e.data["path"]] = e
    return newest


def check_run(run_dir: str | os.PathLike[str], ledger: Ledger | None, *, events: list[Event] | None = None,
              sha256: Callable[[Path], str] = file_sha256) -> RunCheck:
    """Compare every recorded file of the run with the ledger (no refusal; see :func:`verify_run`).

    Args:
        events: the run's events when the caller has read them already (the dashboard reads the ledger once).
        sha256: how a file is hashed (the dashboard caches hashes by file size and modification time).

    Raises:
        ConfigError: the ledger did not record the run.
    """
    from nnforge.govern.report import recorded_metrics

    folder = Path(run_dir)
    config = runs.read_config(folder)
    run_id = str(config.get("run_id") or folder.name)
    if ledger is None:
        return RunCheck(run_id, folder, None, run_status([], config), run_status([], config))
    if events is None or not any(e.kind == "run.started" for e in events):
        events = ledger.run_events(run_id)
    altered: list[AlteredFile] = []
    artifacts = _newest_artifacts(events)
    recorded: dict[str, str] = {}
    for rel, e in artifacts.items():
        if os.path.isabs(rel):
            continue  # written outside the run folder (a --junit path): not the run's to vouch for
        recorded[str(folder / rel)] = str(e.data.get("sha256"))
        path = runs.run_file(folder, rel)
        found = sha256(path) if path is not None else None
        if found != e.data.get("sha256"):
            altered.append(AlteredFile(str(e.data.get("name")), str(folder / rel), str(e.data.get("sha256")),
                                       found, e.seq))
    metrics, metrics_altered = recorded_metrics(folder, events)
    status = run_status(events, config)
    final = "altered" if altered or metrics_altered else status
    return RunCheck(run_id, folder, ledger.location, final, status, altered, metrics_altered, len(artifacts) + 1,
                    metrics, recorded)


def verify_run(run_dir: str | os.PathLike[str], *, use: str, ledger: str | os.PathLike[str] | Ledger | None = None,
               allow_modified: bool = False, actor: str | None = None) -> RunCheck:
    """Check the run's files against its ledger before ``use`` (``"predict"``, ``"docs"``, …).

    Returns:
        the :class:`RunCheck` (``ledger`` is the location of the ledger that recorded the run).

    Raises:
        IntegrityError: a recorded file was altered or is missing, ``metrics.json`` differs from the recorded
            figures, or no ledger records the run — unless ``allow_modified``, which is recorded in the ledger
            as an ``integrity.overridden`` event (and logged as a warning).
    """
    if isinstance(ledger, Ledger):
        check = check_run(run_dir, ledger)
    else:
        loc = find_ledger(run_dir, ledger)
        led = Ledger.open(loc, actor=actor) if loc is not None else None
        try:
            check = check_run(run_dir, led)
        finally:
            if led is not None:
                led.close()
    if check.ok:
        return check
    if not allow_modified:
        raise IntegrityError(f"{check.run_dir}: not used for {use}: {check.problem()}. The run's files must be "
                             "the bytes its ledger recorded: rerun the recipe or restore the files, or pass "
                             "--allow-modified (allow_modified=True) to use them anyway (recorded in the ledger)")
    log.warning("%s: using altered files for %s (allowed): %s", check.run_dir, use, check.problem())
    if check.ledger is not None:
        data = {"use": use, "run_dir": str(check.run_dir), "files": [
            {"name": a.name, "path": a.path, "recorded_sha256": a.recorded, "sha256": a.found} for a in check.altered],
            "metrics_altered": check.metrics_altered}
        if isinstance(ledger, Ledger):
            ledger.append(OVERRIDE_EVENT, data, run=check.run_id, actor=actor)
        else:
            with Ledger.open(check.ledger, actor=actor) as led:
                led.append(OVERRIDE_EVENT, data, run=check.run_id)
    return check
