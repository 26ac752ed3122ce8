"""The audit ledger: append-only, hash-chained events about runs, steps, artifacts and decisions."""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nnforge.errors import ConfigError, IntegrityError, check_output_path
from nnforge.ledger._events import Event, Verification, event_hash, make_body, verify_chain
from nnforge.ledger._store import Store, open_store

__all__ = ["Ledger", "DEFAULT_LEDGER", "file_sha256", "atomic_write_text", "default_actor"]

DEFAULT_LEDGER = Path(".nnforge") / "ledger.db"


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename.

    Refuses (:class:`ConfigError`) a folder and an existing SQLite database — a ledger: an output path
    mistyped as the ledger's would otherwise replace the whole record.
    """
    p = Path(path)
    check_output_path(p)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(p.parent / f".{p.name}.{os.urandom(6).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # 0666 less the umask, as open() (mkstemp: 0600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="microseconds")


def default_actor() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user database entry (containers)
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


class Ledger:
    """Append-only, hash-chained events.

    Args:
        store: where events live; use :meth:`open` for a path or URL.
        actor: who acts (default: the OS user); recorded in every event.
    """

    def __init__(self, store: Store, actor: str | None = None) -> None:
        self.store = store
        self.actor = actor or default_actor()

    @classmethod
    def open(cls, location: str | os.PathLike[str] | None = None, actor: str | None = None) -> Ledger:
        """Open (creating if needed) the ledger at a SQLite path (default ``.nnforge/ledger.db``) or at a
        ``postgresql://user@host:port/dbname`` URL (needs the ``postgres`` extra); a ``.jsonl`` export opens
        read-only, for verifying an archive offline."""
        loc = str(location) if location is not None else str(DEFAULT_LEDGER)
        return cls(open_store(loc), actor)

    @property
    def location(self) -> str:
        return self.store.location

    def append(self, kind: str, data: dict[str, Any] | None = None, *, run: str | None = None,
               actor: str | None = None) -> Event:
        """Record one event and return it (with its sequence number and hash)."""
        return self.append_many([(kind, data, run, actor)])[0]

    def append_many(self, events: Sequence[tuple[str, dict[str, Any] | None, str | None, str | None]]) -> list[Event]:
        """Record several events ``(kind, data, run, actor)`` in order, in one write transaction: all are
        recorded, chained one after the other, or none is (one disk sync instead of one per event)."""
        when = _now()
        bodies: list[str] = []
        builds = []
        for kind, data, run, actor in events:
            if not kind or not isinstance(kind, str):
                raise ValueError("event kind must be a non-empty string")
            payload, who = dict(data or {}), actor or self.actor

            def build(seq: int, prev: str, kind: str = kind, run: str | None = run, who: str = who,
                      payload: dict[str, Any] = payload) -> tuple[str, str]:
                body = make_body(seq, run, kind, when, who, payload, prev)
                bodies.append(body)
                return event_hash(body), body

            builds.append(build)
        rows = self.store.append_many(builds)
        return [Event.from_row(seq, hash_, body) for (seq, hash_), body in zip(rows, bodies, strict=True)]

    def events(self, run: str | None = None, kind: str | None = None) -> list[Event]:
        """Stored events in order, optionally only those of one run and/or kind."""
        out = []
        for seq, hash_, body in self.store.rows():
            try:
                ev = Event.from_row(seq, hash_, body)
            except json.JSONDecodeError:
                raise IntegrityError(f"ledger event #{seq} is not valid JSON; run 'nnforge ledger verify'") from None
            if (run is None or ev.run == run) and (kind is None or ev.kind == kind):
                out.append(ev)
        return out

    def run_events(self, run_id: str) -> list[Event]:
        """The events of run ``run_id``; a :class:`ConfigError` when this ledger did not record the run's start
        (another ledger did: a report or document built from this one would leave out what happened)."""
        events = self.events(run=run_id)
        if not any(e.kind == "run.started" for e in events):
            raise ConfigError(f"the ledger at {self.location} did not record run {run_id} (no run.started event); "
                              "pass the ledger the run wrote to (--ledger, or NNFORGE_LEDGER)")
        return events

    def head(self) -> str:
        """Hash of the newest event (the value to print in reports and to sign)."""
        return self.store.head()[1]

    def verify(self, head: str | None = None) -> Verification:
        """Check the whole chain; with ``head``, also that this earlier head is still in it."""
        return verify_chain(self.store.rows(), expect_head=head)

    def export_jsonl(self, path: str | os.PathLike[str]) -> int:
        """Write every event (with its hash) as one JSON object per line; returns the count.

        Raises:
            ConfigError: the ledger holds no event (an empty file would not be an export anyone can verify).
        """
        events = self.events()
        if not events:
            raise ConfigError(f"the ledger at {self.location} holds no events: nothing to export")
        atomic_write_text(path, "".join(json.dumps(e.to_dict(), sort_keys=True) + "\n" for e in events))
        return len(events)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
