from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from nnforge.errors import ConfigError, IntegrityError
from nnforge.ledger import Ledger


@pytest.fixture
def ledger(tmp_path):
    led = Ledger.open(tmp_path / "ledger.db", actor="tester")
    for i in range(6):
        led.append("note", {"i": i, "text": f"event {i}"}, run="r1" if i % 2 else "r2")
    return led


def _sql(led: Ledger, statement: str, *args: object) -> None:
    with sqlite3.connect(led.location) as conn:
        conn.execute(statement, args)


def test_chain_verifies_and_events_filter(ledger):
    result = ledger.verify()
    assert result.ok and result.events == 6 and result.head == ledger.head()
    assert [e.data["i"] for e in ledger.events(run="r1")] == [1, 3, 5]
    assert ledger.events()[0].actor == "tester"


def test_modified_body_is_named(ledger):
    _sql(ledger, "UPDATE events SET body = replace(body, 'event 3', 'event X') WHERE seq = 4")
    result = ledger.verify()
    assert not result.ok and result.broken_seq == 4 and "modified" in result.reason


def test_rehashed_row_breaks_the_next_link(ledger):
    import hashlib

    row = sqlite3.connect(ledger.location).execute("SELECT body FROM events WHERE seq = 2").fetchone()
    body = row[0].replace("event 1", "event Y")
    _sql(ledger, "UPDATE events SET body = ?, hash = ? WHERE seq = 2", body, hashlib.sha256(body.encode()).hexdigest())
    result = ledger.verify()
    assert not result.ok and result.broken_seq == 3


def test_deleted_middle_row_is_named(ledger):
    _sql(ledger, "DELETE FROM events WHERE seq = 3")
    result = ledger.verify()
    assert not result.ok and result.broken_seq == 3 and "missing" in result.reason


def test_swapped_rows_are_detected(ledger):
    rows = dict(((s, (h, b)) for s, h, b in sqlite3.connect(ledger.location).execute("SELECT * FROM events")))
    _sql(ledger, "UPDATE events SET hash = ?, body = ? WHERE seq = 2", *rows[5])
    _sql(ledger, "UPDATE events SET hash = ?, body = ? WHERE seq = 5", *rows[2])
    result = ledger.verify()
    assert not result.ok and result.broken_seq == 2


def test_truncating_newest_events_is_caught_with_an_earlier_head(ledger):
    head = ledger.head()
    _sql(ledger, "DELETE FROM events WHERE seq >= 5")
    assert ledger.verify().ok  # a shorter chain is still a valid chain ...
    result = ledger.verify(head=head)  # ... but not against the head a report printed
    assert not result.ok and "not in the chain" in result.reason


def test_export_jsonl(ledger, tmp_path):
    import json

    n = ledger.export_jsonl(tmp_path / "out.jsonl")
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert n == 6 == len(lines) and json.loads(lines[-1])["hash"] == ledger.head()


def test_postgres_url_is_not_yet_supported(tmp_path):
    with pytest.raises(ConfigError, match="PostgreSQL"):
        Ledger.open("postgresql://localhost/x")


def test_damaged_database_file_is_an_integrity_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(IntegrityError, match="not a readable ledger"):
        Ledger.open(bad)


def test_a_row_rewritten_with_another_sql_type_is_named_not_a_crash(ledger):
    _sql(ledger, "UPDATE events SET body = CAST(body AS BLOB) WHERE seq = 4")
    result = ledger.verify()
    assert not result.ok and result.broken_seq == 4 and "wrong types" in result.reason


def test_a_truncated_database_file_is_detected(tmp_path):
    path = tmp_path / "ledger.db"
    led = Ledger.open(path)
    for i in range(400):
        led.append("note", {"i": i, "text": "x" * 200})
    led.close()
    for suffix in ("-wal", "-shm"):  # checkpointed by close; a copy of the file alone is what is cut
        (tmp_path / f"ledger.db{suffix}").unlink(missing_ok=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError):
        Ledger.open(path).verify()


def _append_many(path: str, n: int, tag: int) -> None:
    led = Ledger.open(path)
    for i in range(n):
        led.append("concurrent", {"writer": tag, "i": i})


def test_concurrent_processes_lose_nothing(tmp_path):
    path = str(tmp_path / "c.db")
    Ledger.open(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, 150, k)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    led = Ledger.open(path)
    result = led.verify()
    assert result.ok and result.events == 450
    per_writer = [sum(1 for e in led.events() if e.data["writer"] == k) for k in range(3)]
    assert per_writer == [150, 150, 150]
