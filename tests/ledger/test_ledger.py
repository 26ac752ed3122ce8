from __future__ import annotations

import multiprocessing as mp

import pytest

from nnforge.errors import ConfigError, IntegrityError
from nnforge.ledger import Ledger


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    """Where a ledger lives: the same tests run on a SQLite file and on a real PostgreSQL server."""
    if request.param == "sqlite":
        return str(tmp_path / "ledger.db")
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def ledger(location):
    led = Ledger.open(location, actor="tester")
    for i in range(6):
        led.append("note", {"i": i, "text": f"event {i}"}, run="r1" if i % 2 else "r2")
    yield led
    led.close()


def _query(led: Ledger, statement: str, *args: object) -> list[tuple]:
    """Run SQL straight against the ledger's database, as an attacker with write access would."""
    conn = led.store.connect()
    try:
        cur = conn.execute(statement.replace("?", "%s") if led.store.dialect == "postgresql" else statement, args)
        return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()





def test_chain_verifies_and_events_filter(ledger):
    result = ledger.verify()
    assert result.ok and result.events == 6 and result.head == ledger.head()
    assert [e.data["i"] for e in ledger.events(run="r1")] == [1, 3, 5]
    assert ledger.events()[0].actor == "tester"


def test_modified_body_is_named(ledger):
    _query(ledger, "UPDATE events SET body = replace(body, 'event 3', 'event X') WHERE seq = 4")
    result = ledger.verify()
    assert not result.ok and result.broken_seq == 4 and "modified" in result.reason


def test_rehashed_row_breaks_the_next_link(ledger):
    import hashlib

    body = _query(ledger, "SELECT body FROM events WHERE seq = 2")[0][0]
    body = body.replace("event 1", "event Y")
    _query(ledger, "UPDATE events SET body = ?, hash = ? WHERE seq = 2", body, hashlib.sha256(body.encode()).hexdigest())
    result = ledger.verify()
    assert not result.ok and result.broken_seq == 3


def test_deleted_middle_row_is_named(ledger):
    _query(ledger, "DELETE FROM events WHERE seq = 3")
    result = ledger.verify()
    assert not result.ok and result.broken_seq == 3 and "missing" in result.reason


def test_swapped_rows_are_detected(ledger):
    rows = {s: (h, b) for s, h, b in _query(ledger, "SELECT seq, hash, body FROM events")}
    _query(ledger, "UPDATE events SET hash = ?, body = ? WHERE seq = 2", *rows[5])
    _query(ledger, "UPDATE events SET hash = ?, body = ? WHERE seq = 5", *rows[2])
    result = ledger.verify()
    assert not result.ok and result.broken_seq == 2


def test_truncating_newest_events_is_caught_with_an_earlier_head(ledger):
    head = ledger.head()
    _query(ledger, "DELETE FROM events WHERE seq >= 5")
    assert ledger.verify().ok  # a shorter chain is still a valid chain ...
    result = ledger.verify(head=head)  # ... but not against the head a report printed
    assert not result.ok and "not in the chain" in result.reason


def test_export_jsonl(ledger, tmp_path):
    import json

    n = ledger.export_jsonl(tmp_path / "out.jsonl")
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert n == 6 == len(lines) and json.loads(lines[-1])["hash"] == ledger.head()


def test_unreachable_postgres_and_unknown_schemes_are_clear_errors():
    with pytest.raises(ConfigError, match=r"cannot connect"):
        Ledger.open("postgresql://nobody:secret@127.0.0.1:1/x")
    try:
        Ledger.open("postgresql://nobody:secret@127.0.0.1:1/x")
    except ConfigError as exc:
        assert "secret" not in str(exc)  # a password in the URL is never echoed
    with pytest.raises(ConfigError, match="postgresql:// URL"):
        Ledger.open("mysql://localhost/x")


def test_postgres_location_hides_the_password(postgres_url):
    url = postgres_url.replace("nnforge@", "nnforge:hunter2@")  # trust auth: any password is accepted
    led = Ledger.open(url)
    led.append("note", {"i": 1})
    assert "hunter2" not in led.location and "***" in led.location and led.verify().ok
    led.close()


def test_damaged_database_file_is_an_integrity_error(tmp_path):
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(IntegrityError, match="not a readable ledger"):
        Ledger.open(bad)


@pytest.mark.parametrize("location", ["sqlite"], indirect=True)  # only SQLite lets a TEXT column hold a BLOB
def test_a_row_rewritten_with_another_sql_type_is_named_not_a_crash(ledger):
    _query(ledger, "UPDATE events SET body = CAST(body AS BLOB) WHERE seq = 4")
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


@pytest.mark.timeout(300)
def test_concurrent_processes_lose_nothing(location):
    path = location
    Ledger.open(path).close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, 150, k)) for k in range(3)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
    finally:  # a writer still running (hung, or the test interrupted) must not outlive the test
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    led = Ledger.open(path)
    result = led.verify()
    assert result.ok and result.events == 450
    per_writer = [sum(1 for e in led.events() if e.data["writer"] == k) for k in range(3)]
    assert per_writer == [150, 150, 150]


def test_a_recipe_run_and_the_cli_use_a_postgres_ledger(postgres_url, workdir, capsys):
    import json

    from nnforge.cli import main

    assert main(["train", "digits", "--set", "steps[0].train.max_steps=20", "--ledger", postgres_url,
                 "--actor", "ana", "--json"]) == 0
    run_id = json.loads(capsys.readouterr().out)["run_id"]
    led = Ledger.open(postgres_url)
    kinds = [e.kind for e in led.events(run=run_id)]
    assert kinds[0] == "run.started" and "step.finished" in kinds and kinds[-1] == "run.finished"
    assert {e.actor for e in led.events(run=run_id)} == {"ana"}
    assert main(["ledger", "verify", "--ledger", postgres_url]) == 0
    _query(led, "UPDATE events SET body = replace(body, 'ana', 'eve') WHERE seq = 2")
    assert main(["ledger", "verify", "--ledger", postgres_url]) == 1
    assert "#2" in capsys.readouterr().out
    led.close()


@pytest.mark.parametrize("location", ["sqlite"], indirect=True)
def test_an_export_verifies_offline_and_tampering_with_it_is_named(ledger, tmp_path, capsys):
    import json

    from nnforge.cli import main

    export = tmp_path / "archive.jsonl"
    ledger.export_jsonl(export)
    head = ledger.head()
    offline = Ledger.open(export)
    assert offline.verify(head=head).ok and offline.head() == head and len(offline.events(run="r1")) == 3
    with pytest.raises(ConfigError, match="read-only"):
        offline.append("note", {})
    assert main(["ledger", "verify", "--ledger", str(export), "--head", head]) == 0

    lines = export.read_text().splitlines()
    doc = json.loads(lines[3])
    doc["data"]["text"] = "event X"  # one field of event #4, hash left alone
    cases = {
        "modified": [*lines[:3], json.dumps(doc), *lines[4:]],
        "deleted": [*lines[:2], *lines[3:]],
        "swapped": [lines[0], lines[2], lines[1], *lines[3:]],
        "garbled": [*lines[:4], lines[4][:40], lines[5]],
    }
    for name, broken in cases.items():
        export.write_text("\n".join(broken) + "\n")
        result = Ledger.open(export).verify()
        assert not result.ok and result.broken_seq == {"modified": 4, "deleted": 3, "swapped": 2, "garbled": 5}[name]
    export.write_text("\n".join(lines[:4]) + "\n")  # newest events cut: valid alone, not against the head
    assert Ledger.open(export).verify().ok and not Ledger.open(export).verify(head=head).ok
    capsys.readouterr()
    assert main(["ledger", "verify", "--ledger", str(export), "--head", head]) == 1
    assert "not in the chain" in capsys.readouterr().out


def test_reading_commands_refuse_files_that_are_not_ledgers(tmp_path, capsys):
    import sqlite3

    from nnforge.cli import main

    (tmp_path / "empty.db").write_bytes(b"")
    with sqlite3.connect(tmp_path / "other.db") as db:
        db.execute("CREATE TABLE t (x)")
    for name, says in (("empty.db", "an empty file"), ("other.db", "without ledger events")):
        for command in (["ledger", "verify"], ["review", "list"]):
            assert main([*command, "--ledger", str(tmp_path / name)]) == 2
            assert says in capsys.readouterr().err
    with sqlite3.connect(tmp_path / "other.db") as db:  # nothing was added to someone else's database
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["t"]
    assert (tmp_path / "empty.db").read_bytes() == b""


def test_event_text_and_keys_are_refused_rather_than_altered(tmp_path):
    from nnforge.errors import DataError

    led = Ledger.open(tmp_path / "l.db")
    with pytest.raises(DataError, match="not valid UTF-8"):
        led.append("review.decided", {"note": "bad byte \udcff"})
    with pytest.raises(DataError, match="same once written as text"):
        led.append("step.finished", {1: "int key", "1": "str key"})
    assert led.events() == [] and led.verify().ok


def test_a_malformed_event_in_the_chain_does_not_break_readers(tmp_path):
    from nnforge.ledger._events import event_hash, make_body

    led = Ledger.open(tmp_path / "l.db")
    led.append("run.started", {}, run="r")

    def build(seq, prev):
        body = make_body(seq, "r", "artifact.written", "t", "x", {}, prev).replace('"data":{}', '"data":["not","a","dict"]')
        return event_hash(body), body

    led.store.append(build)  # a rogue writer, chained correctly
    assert led.verify().ok
    ev = led.events()[-1]
    assert ev.data == {"malformed_data": ["not", "a", "dict"]}


def test_append_many_chains_events_in_one_transaction_all_or_none(tmp_path):
    from nnforge.ledger import Ledger

    with Ledger.open(tmp_path / "l.db") as led:
        led.append("first", {})
        events = led.append_many([("a", {"i": 1}, "r1", None), ("b", {"i": 2}, "r1", "ana")])
        assert [e.seq for e in events] == [2, 3] and events[1].prev == events[0].hash and events[1].actor == "ana"
        with pytest.raises(ValueError, match="kind"):
            led.append_many([("c", {}, None, None), ("", {}, None, None)])  # the second is invalid: neither lands
        with pytest.raises(TypeError):
            led.append_many([("c", {}, None, None), ("d", {"x": object()}, None, None)])  # fails mid-transaction
        assert [e.kind for e in led.events()] == ["first", "a", "b"]
        assert led.verify().ok
