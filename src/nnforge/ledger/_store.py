"""Where ledger events are stored: a narrow interface and the SQLite implementation.

A :class:`Store` keeps rows ``(seq, hash, body)``. ``append`` must be atomic with respect to other
processes appending to the same store: it reads the newest row, builds the next body from it, and
inserts, all in one write transaction, so concurrent appenders never fork the chain or lose events.
Other backends (PostgreSQL) implement the same four methods.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from nnforge.errors import IntegrityError

__all__ = ["Store", "SQLiteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq  INTEGER PRIMARY KEY,
    hash TEXT NOT NULL,
    body TEXT NOT NULL
);
"""


class Store(Protocol):
    """Storage of hash-chained rows. Implementations are safe across threads and processes."""

    location: str

    def append(self, build: Callable[[int, str], tuple[str, str]]) -> tuple[int, str]:
        """Call ``build(next_seq, prev_hash) -> (hash, body)`` inside a write transaction and store it."""
        ...

    def rows(self, run: str | None = None) -> Iterator[tuple[int, str, str]]:
        """All rows ordered by ``seq``."""
        ...

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest row, ``(0, GENESIS)`` when empty."""
        ...

    def close(self) -> None: ...


class SQLiteStore:
    """Events in one SQLite file in WAL mode (readers never block the writer)."""

    def __init__(self, path: str | Path, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout = timeout_s
        self._local = threading.local()
        try:
            conn = self._conn()
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            raise IntegrityError(f"{self.path}: not a readable ledger database ({exc}). "
                                 "Restore it from a backup or an export.") from None

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
            self._local.conn = conn
        return conn

    def append(self, build: Callable[[int, str], tuple[str, str]]) -> tuple[int, str]:
        from nnforge.ledger._events import GENESIS

        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # takes the write lock before reading the head: no forks
        try:
            row = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
            hash_, body = build(seq, prev)
            conn.execute("INSERT INTO events (seq, hash, body) VALUES (?, ?, ?)", (seq, hash_, body))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return seq, hash_

    def rows(self, run: str | None = None) -> Iterator[tuple[int, str, str]]:
        try:
            cur = self._conn().execute("SELECT seq, hash, body FROM events ORDER BY seq")
            yield from cur
        except sqlite3.DatabaseError as exc:
            raise IntegrityError(f"{self.path}: the ledger database is damaged ({exc})") from None

    def head(self) -> tuple[int, str]:
        from nnforge.ledger._events import GENESIS

        row = self._conn().execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else (0, GENESIS)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
