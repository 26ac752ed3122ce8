"""Where ledger events are stored: a narrow interface and the SQLite implementation.

A :class:`Store` keeps rows ``(seq, hash, body)``. ``append`` must be atomic with respect to other
processes appending to the same store: it reads the newest row, builds the next body from it, and
inserts, all in one write transaction, so concurrent appenders never fork the chain or lose events.

Two implementations: :class:`SQLiteStore` (one file, the default) and :class:`PostgresStore` (a
``postgresql://`` URL, for teams that share one ledger). Both also hand out a plain DB-API connection
(:meth:`connect`) so that the review queue keeps its table in the same database as the events.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from nnforge.errors import ConfigError, IntegrityError

__all__ = ["Store", "SQLiteStore", "PostgresStore", "JSONLStore", "open_store", "redact_url"]

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
    dialect: str  # "sqlite" or "postgresql": which SQL the connection from connect() speaks

    def append(self, build: Callable[[int, str], tuple[str, str]]) -> tuple[int, str]:
        """Call ``build(next_seq, prev_hash) -> (hash, body)`` inside a write transaction and store it."""
        ...

    def append_many(self, builds: Sequence[Callable[[int, str], tuple[str, str]]]) -> list[tuple[int, str]]:
        """:meth:`append` for several rows, chained in order, in one write transaction (all or none)."""
        ...

    def rows(self, run: str | None = None) -> Iterator[tuple[int, str, str]]:
        """All rows ordered by ``seq``."""
        ...

    def head(self) -> tuple[int, str]:
        """``(seq, hash)`` of the newest row, ``(0, GENESIS)`` when empty."""
        ...

    def close(self) -> None: ...

    def connect(self) -> Any:
        """A new DB-API connection to the same database, in autocommit mode (the caller closes it)."""
        ...


class SQLiteStore:
    """Events in one SQLite file in WAL mode (readers never block the writer)."""

    def __init__(self, path: str | Path, timeout_s: float = 60.0) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        self.dialect = "sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._timeout = timeout_s
        self._local = threading.local()
        try:
            conn = self._conn()
            has_events = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events'").fetchone()
            if not has_events:  # nothing is written to an existing ledger just to read it (read-only storage)
                conn.executescript(_SCHEMA)
            if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                except sqlite3.OperationalError as exc:
                    if not has_events or "readonly" not in str(exc):
                        raise  # a ledger on read-only storage can still be read (and verified)
        except sqlite3.OperationalError as exc:
            if "readonly" in str(exc) or "unable to open" in str(exc):
                raise IntegrityError(f"{self.path}: the ledger database cannot be opened on this storage ({exc}); "
                                     "a read-only copy can be checked after copying it somewhere writable, or "
                                     "through a JSONL export") from None
            raise IntegrityError(f"{self.path}: not a readable ledger database ({exc}). "
                                 "Restore it from a backup or an export.") from None
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
        return self.append_many([build])[0]

    def append_many(self, builds: Sequence[Callable[[int, str], tuple[str, str]]]) -> list[tuple[int, str]]:
        from nnforge.ledger._events import GENESIS

        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")  # takes the write lock before reading the head: no forks
        out = []
        try:
            row = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (row[0], row[1]) if row else (0, GENESIS)
            for build in builds:
                seq += 1
                prev, body = build(seq, prev)
                conn.execute("INSERT INTO events (seq, hash, body) VALUES (?, ?, ?)", (seq, prev, body))
                out.append((seq, prev))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return out

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

    def connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._timeout, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout={int(self._timeout * 1000)}")
        return conn


_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq  BIGINT PRIMARY KEY,
    hash TEXT NOT NULL,
    body TEXT NOT NULL
)
"""
# one arbitrary 64-bit key for pg_advisory_xact_lock: serialises schema creation across processes
_PG_LOCK_KEY = 0x6E6E666F726765  # "nnforge"


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (locations are printed in reports and documents)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[-1]}"))


class PostgresStore:
    """Events in a PostgreSQL table ``events`` (psycopg 3), for a ledger several machines share.

    ``append`` runs in one transaction that first takes ``LOCK TABLE events IN EXCLUSIVE MODE``: readers go
    on, but appenders queue, so each reads the true head before it inserts (the primary key on ``seq``
    would refuse a fork anyway). Give the password through ``PGPASSWORD`` or ``~/.pgpass`` rather than
    in the URL: the URL is recorded in run folders and documents, with any password redacted.
    """

    def __init__(self, url: str, timeout_s: float = 60.0) -> None:
        try:
            import psycopg
        except ImportError:
            raise ConfigError("a postgresql:// ledger needs psycopg 3: pip install 'nnforge[postgres]'") from None
        self._psycopg = psycopg
        self.url = url
        self.location = redact_url(url)
        self.dialect = "postgresql"
        self._timeout = timeout_s
        self._local = threading.local()
        conn = self._conn()
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_PG_LOCK_KEY,))
            conn.execute(_PG_SCHEMA)

    def connect(self) -> Any:
        try:
            conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=int(self._timeout))
        except self._psycopg.OperationalError as exc:
            raise ConfigError(f"ledger {self.location}: cannot connect ({str(exc).strip()})") from None
        conn.execute(f"SET lock_timeout = '{int(self._timeout * 1000)}ms'")
        return conn

    def _conn(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self.connect()
            self._local.conn = conn
        return conn

    def append(self, build: Callable[[int, str], tuple[str, str]]) -> tuple[int, str]:
        return self.append_many([build])[0]

    def append_many(self, builds: Sequence[Callable[[int, str], tuple[str, str]]]) -> list[tuple[int, str]]:
        from nnforge.ledger._events import GENESIS

        conn = self._conn()
        out = []
        with conn.transaction():
            conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
            row = conn.execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (int(row[0]), row[1]) if row else (0, GENESIS)
            for build in builds:
                seq += 1
                prev, body = build(seq, prev)
                conn.execute("INSERT INTO events (seq, hash, body) VALUES (%s, %s, %s)", (seq, prev, body))
                out.append((seq, prev))
        return out

    def rows(self, run: str | None = None) -> Iterator[tuple[int, str, str]]:
        # a server-side cursor streams a long chain instead of loading it whole; it gets a connection of its
        # own, so that a caller who stops reading halfway never leaves the shared one inside a transaction
        conn = self.connect()
        try:
            with conn.transaction(), conn.cursor(name="nnforge_rows") as cur:
                cur.execute("SELECT seq, hash, body FROM events ORDER BY seq")
                for seq, hash_, body in cur:
                    yield int(seq), hash_, body
        finally:
            conn.close()

    def head(self) -> tuple[int, str]:
        from nnforge.ledger._events import GENESIS

        row = self._conn().execute("SELECT seq, hash FROM events ORDER BY seq DESC LIMIT 1").fetchone()
        return (int(row[0]), row[1]) if row else (0, GENESIS)

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


class JSONLStore:
    """A ledger export (``nnforge ledger export``, one event per line) read back, read-only.

    This is how an archived export is verified offline, with nothing but the file: each line's stored
    fields are put back into the canonical body that was hashed, so a changed field, a deleted, duplicated
    or reordered line, or a line that is not JSON breaks the chain at that event, exactly as in the
    database. ``verify --head`` and signed heads work on it too.
    """

    dialect = "jsonl"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.location = str(self.path)
        if not self.path.is_file():
            raise ConfigError(f"{self.path}: no such ledger export (write one with 'nnforge ledger export')")
        self._check_is_export()

    _FIELDS = frozenset({"seq", "run", "kind", "time", "actor", "data", "prev", "hash"})

    def _check_is_export(self) -> None:
        """Bad input (ConfigError), not tampering: an empty file, or one whose first event is not an export's
        (a JSONL file of something else). A readable first event and broken lines after it are tampering, which
        verification names."""
        with self.path.open(encoding="utf-8", errors="replace") as f:
            first = next((line for line in f if line.strip()), None)
        if first is None:
            raise ConfigError(f"{self.path}: an empty file, not a ledger export (an export holds at least one "
                              "event). Pass the export 'nnforge ledger export' wrote, or the ledger database")
        try:
            doc = json.loads(first)
        except ValueError:
            doc = None
        if not isinstance(doc, dict) or not self._FIELDS <= set(doc) or not isinstance(doc.get("seq"), int):
            raise ConfigError(f"{self.path}: its first line is not a ledger event (expected a JSON object with "
                              f"{', '.join(sorted(self._FIELDS))}): this file is not an nnforge ledger export. "
                              "Pass the export 'nnforge ledger export' wrote")

    def rows(self, run: str | None = None) -> Iterator[tuple[int, str, str]]:
        from nnforge.ledger._events import make_body

        with self.path.open(encoding="utf-8", errors="replace") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    doc = json.loads(line)
                    body = make_body(doc["seq"], doc["run"], doc["kind"], doc["time"], doc["actor"], doc["data"],
                                     doc["prev"])
                    yield doc["seq"], doc["hash"], body
                except (ValueError, KeyError, TypeError):
                    # unreadable line: yields a row whose hash cannot match, so verification names it
                    yield lineno, "", line

    def head(self) -> tuple[int, str]:
        from nnforge.ledger._events import GENESIS

        last = (0, GENESIS)
        for seq, hash_, _ in self.rows():
            last = (seq, hash_)
        return last

    def append(self, build: Callable[[int, str], tuple[str, str]]) -> tuple[int, str]:
        return self.append_many([build])[0]

    def append_many(self, builds: Sequence[Callable[[int, str], tuple[str, str]]]) -> list[tuple[int, str]]:
        raise ConfigError(f"{self.path} is a ledger export, read-only: append to the ledger database instead")

    def connect(self) -> Any:
        raise ConfigError(f"{self.path} is a ledger export: the review queue needs the ledger database")

    def close(self) -> None:
        pass


def open_store(location: str) -> Store:
    """The store for a SQLite path, a ``postgresql://`` URL, or a ``.jsonl`` export (read-only)."""
    if location.startswith(("postgresql://", "postgres://")):
        return PostgresStore(location)
    if location.endswith(".jsonl"):
        return JSONLStore(location)
    if "://" in location:
        raise ConfigError(f"ledger location {redact_url(location)!r}: expected a file path or a postgresql:// URL")
    return SQLiteStore(location)
