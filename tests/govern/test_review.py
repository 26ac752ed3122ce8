"""Human oversight: review rules, the review queue (ledger events, one decision, escaping, stats), and the
promotion gate (passing suite and approver required, revocation recorded). No model is run."""

from __future__ import annotations

import hashlib
import json

import pytest

from nnforge.cli import main
from nnforge.errors import ConfigError, DataError, IntegrityError
from nnforge.govern import PromotionRefused, ReviewQueue, promote, promotions, review_rules, revoke
from nnforge.govern.users import AccessDenied, User, UserStore
from nnforge.ledger import Ledger

# users as UserStore.authenticate returns them (the library trusts its caller; the CLI and dashboard authenticate)
ANA, BOB, MALLORY = (User(n, "reviewer", via="token") for n in ("ana", "bob", "mallory"))
CARLA = User("carla", "approver", via="token")
NASTY = "<script>alert('x')</script> [red]boom[/red] \x1b[2Jcleared"


def _preds(confs):
    return [{"text": f"t{i}", "label": "a", "confidence": c} for i, c in enumerate(confs)]


# --- rules -----------------------------------------------------------------------------------------------------


def test_rules_pick_low_confidence_and_ood_with_ood_taking_precedence():
    preds = _preds([0.9, 0.3, 0.95, 0.49, 0.2])
    picks = review_rules(preds, min_confidence=0.5, ood_flags=[False, False, True, False, True], audit_rate=0.0)
    assert [(p.index, p.reason) for p in picks] == [(1, "low_confidence"), (2, "ood"), (3, "low_confidence"),
                                                    (4, "ood")]
    assert review_rules(_preds([0.9, 0.8]), audit_rate=0.0) == []


def test_audit_sample_is_seeded_and_about_the_requested_rate():
    preds = _preds([0.99] * 2000)
    a = review_rules(preds, audit_rate=0.1, seed=3)
    assert a == review_rules(preds, audit_rate=0.1, seed=3)
    assert [p.index for p in a] != [p.index for p in review_rules(preds, audit_rate=0.1, seed=4)]
    assert all(p.reason == "audit" for p in a) and 150 <= len(a) <= 250
    assert len(review_rules(preds, audit_rate=1.0)) == 2000
    # the audit draw does not depend on the flags: flagged inputs keep their reason, the rest keep their draw
    flagged = review_rules(preds, audit_rate=0.1, seed=3, ood_flags=[i % 2 == 0 for i in range(2000)])
    assert {p.index for p in flagged if p.reason == "audit"} == {p.index for p in a if p.index % 2 == 1}


def test_rules_reject_bad_input():
    with pytest.raises(DataError, match="2 OOD flags for 3"):
        review_rules(_preds([0.1, 0.2, 0.3]), ood_flags=[True, False])
    with pytest.raises(ConfigError, match="audit_rate"):
        review_rules(_preds([0.1]), audit_rate=1.5)
    with pytest.raises(DataError, match="confidence"):
        review_rules([{"label": "a"}])


# --- queue -----------------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def queue(request, tmp_path):
    """The queue in a SQLite ledger and in a PostgreSQL one: the same tests run on both."""
    where = tmp_path / "ledger.db" if request.param == "sqlite" else request.getfixturevalue("postgres_url")
    q = ReviewQueue.open(where)
    yield q
    q.close()


def test_enqueue_and_decide_write_ledger_events(queue):
    item = queue.enqueue(run="r1", variant="fp32", text="hello", label="comedy", confidence=0.4,
                         reason="low_confidence")
    assert item.status == "open" and item.input_sha256 == hashlib.sha256(b"hello").hexdigest()
    done = queue.decide(item.id, reviewer=ANA, approve=False, override_label="tragedy", note="act V",
                        allowed_labels=["comedy", "tragedy"])
    assert done.status == "overridden" and done.final_label == "tragedy" and done.decision_seconds >= 0
    events = queue.ledger.events()
    assert [e.kind for e in events] == ["review.enqueued", "review.decided"]
    enq, dec = events
    assert enq.run == "r1" and enq.data["item"] == item.id and enq.data["reason"] == "low_confidence"
    assert "hello" not in json.dumps(enq.data)  # the ledger keeps the input's hash, not its text
    assert dec.actor == "ana" and dec.data["reviewer"] == "ana" and dec.data["decision"] == "overridden"
    assert dec.data["item"] == item.id and dec.data["seconds"] == pytest.approx(done.decision_seconds)
    assert queue.ledger.verify().ok


def test_second_decision_refused_and_bad_decisions(queue):
    item = queue.enqueue(run="r1", text="x", label="a", confidence=0.9, reason="audit")
    with pytest.raises(ConfigError, match="exactly one"):
        queue.decide(item.id, reviewer=ANA, approve=True, override_label="b")
    with pytest.raises(ConfigError, match="not one of the run's labels"):
        queue.decide(item.id, reviewer=ANA, approve=False, override_label="zzz", allowed_labels=["a", "b"])
    with pytest.raises(AccessDenied, match="no authenticated user"):
        queue.decide(item.id, reviewer=User("ana", "reviewer"), approve=True)  # not authenticated (no via)
    queue.decide(item.id, reviewer=ANA, approve=True)
    with pytest.raises(ConfigError, match="already decided"):
        queue.decide(item.id, reviewer=BOB, approve=False, override_label="b")
    with pytest.raises(ConfigError, match="no such item"):
        queue.get(999)
    assert queue.get(item.id).reviewer == "ana"
    assert [e.kind for e in queue.ledger.events()].count("review.decided") == 1
    with pytest.raises(ConfigError, match="reason"):
        queue.enqueue(run="r1", text="x", label="a", confidence=0.9, reason="whim")


def test_stats_per_reviewer_and_reason(queue):
    ids = [queue.enqueue(run="r", text=str(i), label="a", confidence=0.3, reason=r).id
           for i, r in enumerate(["low_confidence", "low_confidence", "ood", "audit", "audit"])]
    queue.decide(ids[0], reviewer=ANA, approve=True)
    queue.decide(ids[1], reviewer=ANA, approve=False, override_label="b")
    queue.decide(ids[2], reviewer=BOB, approve=True)
    s = queue.stats()
    assert s["total"]["items"] == 5 and s["total"]["open"] == 2 and s["total"]["decided"] == 3
    assert s["by_reviewer"]["ana"]["approval_rate"] == 0.5 and s["by_reviewer"]["bob"]["approval_rate"] == 1.0
    assert s["by_reason"]["low_confidence"]["decided"] == 2 and s["by_reason"]["audit"]["open"] == 2
    assert s["by_reason"]["audit"]["approval_rate"] is None
    assert s["by_reviewer"]["ana"]["median_decision_seconds"] >= 0
    assert [i.id for i in queue.list("open")] == ids[3:]


# --- CLI -------------------------------------------------------------------------------------------------------


@pytest.fixture
def fake_run(tmp_path):
    run = tmp_path / "runs" / "run1"
    run.mkdir(parents=True)
    (run / "model.safetensors").write_bytes(b"weights-fp32")
    (run / "model-int8.safetensors").write_bytes(b"weights-int8")
    (run / "config.json").write_text(json.dumps({
        "run_id": "run1", "final_variant": "int8", "label_names": ["comedy", "tragedy"],
        "variants": {"fp32": "model.safetensors", "int8": "model-int8.safetensors"}}))
    led = Ledger.open(tmp_path / "ledger.db")  # what the run recorded: its start and the weights it wrote
    led.append("run.started", {"recipe": "fake"}, run="run1")
    for variant, f in (("fp32", "model.safetensors"), ("int8", "model-int8.safetensors")):
        led.append("artifact.written", {"name": f"model:{variant}", "path": f,
                                        "sha256": hashlib.sha256((run / f).read_bytes()).hexdigest()}, run="run1")
    led.close()
    return run


@pytest.fixture
def tokens(tmp_path, monkeypatch):
    """Users beside tmp_path/ledger.db: the tokens of root (admin), ana and bob (reviewers), carla and dan
    (approvers); ``tokens.act(name)`` puts that user's token in NNFORGE_TOKEN."""
    monkeypatch.setenv("NNFORGE_SCRYPT_N", "1024")
    store = UserStore.for_ledger(tmp_path / "ledger.db")
    with Ledger.open(tmp_path / "ledger.db") as led:
        out = {"root": store.add("root", "admin", by=None, ledger=led)[1]}
        root = store.authenticate(out["root"])
        for name, role in (("ana", "reviewer"), ("bob", "reviewer"), ("carla", "approver"), ("dan", "approver")):
            out[name] = store.add(name, role, by=root, ledger=led)[1]

    class Tokens(dict):
        def act(self, name):
            monkeypatch.setenv("NNFORGE_TOKEN", self[name])

    return Tokens(out)


def _suite(run, name, passed, ledger, variant="int8", file=None):
    """A suite result file, recorded in the ledger the way 'nnforge evaluate' records it."""
    path = run / (file or f"suite-{name}.json")
    path.write_text(json.dumps({
        "suite": name, "sha256": "ab" * 32, "passed": passed, "failed": [] if passed else ["accuracy >= 0.9"],
        "variant": variant}))
    led = Ledger.open(ledger)
    led.append("suite.evaluated", {"suite": name, "variant": variant, "passed": passed,
                                   "outputs": {"json": hashlib.sha256(path.read_bytes()).hexdigest()}}, run="run1")
    led.close()


def test_cli_decide_show_list_stats_and_escaping(fake_run, tmp_path, capsys, tokens):
    led = str(tmp_path / "ledger.db")
    with ReviewQueue.open(led) as q:
        a = q.enqueue(run="run1", variant="int8", text=NASTY, label="comedy", confidence=0.3, reason="ood").id
        b = q.enqueue(run="run1", variant="int8", text="fine", label="comedy", confidence=0.9, reason="audit").id
    runs = str(tmp_path / "runs")
    common = ["--ledger", led, "--runs-dir", runs]
    assert main(["review", "decide", str(a), "--approve", *common]) == 2  # no token
    assert "no token given" in capsys.readouterr().err
    tokens.act("ana")
    assert main(["review", "decide", str(a), "--approve", "--override", "tragedy", *common]) == 2
    assert main(["review", "decide", str(a), *common]) == 2
    assert main(["review", "decide", str(a), "--override", "history", *common]) == 2
    assert main(["review", "decide", str(a), "--override", "comedy", *common]) == 2  # the model's own label
    assert "approve it instead" in capsys.readouterr().err
    assert main(["review", "decide", "99", "--approve", *common]) == 2
    capsys.readouterr()
    assert main(["review", "decide", str(a), "--approve", "--reviewer", "bob", *common]) == 2  # not who ana is
    assert "not the authenticated user" in capsys.readouterr().err
    assert main(["review", "decide", str(a), "--override", "tragedy", "--note", NASTY, "--reviewer", "ana",
                 *common]) == 0
    tokens.act("bob")
    assert main(["review", "decide", str(a), "--approve", *common]) == 2
    assert main(["review", "decide", str(b), "--approve", *common]) == 0
    capsys.readouterr()

    with ReviewQueue.open(led) as q:
        assert q.get(a).note == NASTY and q.get(a).input_text == NASTY  # stored verbatim
    assert main(["review", "show", str(a), "--ledger", led]) == 0
    shown = capsys.readouterr().out
    assert "<script>alert('x')</script>" in shown and "[red]boom[/red]" in shown  # markup not interpreted
    assert "\x1b" not in shown and "\\x1b[2Jcleared" in shown  # terminal escapes neutralised
    assert "tragedy" in shown and "ana" in shown
    assert main(["review", "show", "99", "--ledger", led]) == 2

    assert main(["review", "list", "--ledger", led, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(i["id"], i["status"]) for i in listed] == [(a, "overridden"), (b, "approved")]
    assert main(["review", "list", "--status", "open", "--ledger", led, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert main(["review", "list", "--ledger", led]) == 0
    table = capsys.readouterr().out
    assert "\x1b" not in table and "\\x1b[2" in table and "<scrip" in table and "[red]b" in table

    assert main(["review", "stats", "--ledger", led, "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["by_reviewer"]["ana"]["overridden"] == 1 and s["by_reviewer"]["bob"]["approved"] == 1
    assert set(s["by_reason"]) == {"ood", "audit"}
    decided = [e for e in Ledger.open(led).events() if e.kind == "review.decided"]
    assert [(e.data["item"], e.data["reviewer"], e.data["decision"]) for e in decided] == [
        (a, "ana", "overridden"), (b, "bob", "approved")]


def test_promote_requires_approver_and_passing_suite(fake_run, tmp_path, capsys, tokens):
    led = str(tmp_path / "ledger.db")
    args = ["promote", str(fake_run), "--to", "production", "--ledger", led]
    _suite(fake_run, "quick", True, led)
    _suite(fake_run, "strict", False, led)
    assert main(args) == 2  # no token
    tokens.act("ana")
    assert main(args) == 2  # a reviewer cannot promote
    assert "needs the approver role" in capsys.readouterr().err
    assert not Ledger.open(led).events(kind="model.promoted")
    tokens.act("carla")
    assert main([*args, "--approver", "carla"]) == 1
    assert "strict" in capsys.readouterr().err
    assert main([*args, "--approver", "carla", "--suite", "missing"]) == 2
    assert not Ledger.open(led).events(kind="model.promoted")
    assert main([*args, "--approver", "carla", "--suite", "quick", "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["kind"] == "model.promoted" and ev["actor"] == "carla" and ev["run"] == "run1"
    d = ev["data"]
    assert d["approver"] == "carla" and d["variant"] == "int8" and d["stage"] == "production"
    assert d["weights_sha256"] == hashlib.sha256(b"weights-int8").hexdigest()
    assert [(s["name"], s["passed"]) for s in d["suites"]] == [("quick", True)]
    assert d["suites"][0]["sha256"] == hashlib.sha256((fake_run / "suite-quick.json").read_bytes()).hexdigest()


def test_a_reason_without_revoke_is_refused(fake_run, tmp_path, capsys, tokens):
    tokens.act("carla")
    Ledger.open(tmp_path / "ledger.db").close()
    assert main(["promote", str(fake_run), "--approver", "carla", "--reason", "because",
                 "--ledger", str(tmp_path / "ledger.db")]) == 2
    assert "--reason goes with --revoke" in capsys.readouterr().err


def test_promote_without_suites_then_revoke_keeps_the_record(fake_run, tmp_path, tokens):
    led = Ledger.open(tmp_path / "ledger.db")
    with pytest.raises(ConfigError, match="no standing promotion"):
        revoke(led, fake_run, approver=CARLA, reason="oops")
    ev = promote(led, fake_run, approver=CARLA, variant="fp32")
    assert ev.data["no_suite"] and ev.data["suites"] == []
    _suite(fake_run, "strict", False, led.location)
    with pytest.raises(PromotionRefused, match="strict"):
        promote(led, fake_run, approver=CARLA)
    led.close()
    common = ["--ledger", str(tmp_path / "ledger.db")]
    tokens.act("dan")
    assert main(["promote", str(fake_run), "--revoke", "--approver", "dan", *common]) == 2  # no reason
    assert main(["promote", str(fake_run), "--revoke", "--approver", "dan", "--reason", "drift", *common]) == 0
    led = Ledger.open(tmp_path / "ledger.db")
    kinds = [e.kind for e in led.events() if e.kind.startswith("model.")]
    assert kinds == ["model.promoted", "model.revoked"]  # the promotion is still there
    rev = led.events(kind="model.revoked")[0]
    assert rev.data["promotion_seq"] == ev.seq and rev.data["approver"] == "dan" and rev.data["reason"] == "drift"
    assert promotions(led, "run1")[0]["revoked"] == rev.seq
    assert led.verify().ok
    assert main(["promote", str(fake_run), "--revoke", "--approver", "dan", "--reason", "again", *common]) == 2


def test_promotion_needs_a_recorded_suite_about_the_promoted_variant(fake_run, tmp_path):
    led = Ledger.open(tmp_path / "ledger.db")
    _suite(fake_run, "quick", True, led.location, variant="int8")
    with pytest.raises(PromotionRefused, match="no regression suite evaluated variant 'fp32'"):
        promote(led, fake_run, approver=CARLA, variant="fp32")  # int8 passing says nothing about fp32
    assert promote(led, fake_run, approver=CARLA, variant="int8").data["suites"][0]["name"] == "quick"
    _suite(fake_run, "strict", False, led.location)
    doc = json.loads((fake_run / "suite-strict.json").read_text())
    (fake_run / "suite-strict.json").write_text(json.dumps({**doc, "passed": True, "failed": []}))  # forged
    with pytest.raises(IntegrityError, match="not the one the ledger recorded"):
        promote(led, fake_run, approver=CARLA)
    (fake_run / "suite-strict.json").unlink()  # deleting the failed result does not open the gate either
    with pytest.raises(PromotionRefused, match="regression suite failed: strict"):
        promote(led, fake_run, approver=CARLA)
    led.close()


def test_the_gate_reads_the_ledger_not_the_folder(fake_run, tmp_path):
    led = Ledger.open(tmp_path / "ledger.db")
    _suite(fake_run, "quick", True, led.location)
    (fake_run / "model-int8.safetensors").write_bytes(b"other weights")  # replaced after the suite passed
    with pytest.raises(IntegrityError, match="not the bytes the run wrote"):
        promote(led, fake_run, approver=CARLA)
    (fake_run / "model-int8.safetensors").write_bytes(b"weights-int8")
    led.append("suite.evaluated", {"suite": "quick", "variant": "int8", "passed": True, "weights_sha256": "0" * 64,
                                   "outputs": {"json": "1" * 64}}, run="run1")
    with pytest.raises(IntegrityError, match="judged other weights"):
        promote(led, fake_run, approver=CARLA)  # the newest verdict is about other bytes
    stranger = tmp_path / "runs" / "stranger"
    stranger.mkdir()
    (stranger / "model.safetensors").write_bytes(b"garbage")
    (stranger / "config.json").write_text(json.dumps({"run_id": "stranger", "variants": {"fp32": "model.safetensors"}}))
    with pytest.raises(ConfigError, match="did not record run stranger"):
        promote(led, stranger, approver=CARLA)  # a folder no ledger recorded
    led.close()
    import sqlite3

    with sqlite3.connect(tmp_path / "ledger.db") as db:  # a recorded verdict rewritten in place
        body = db.execute("SELECT body FROM events WHERE seq = 4").fetchone()[0]
        db.execute("UPDATE events SET body = ? WHERE seq = 4", (body.replace('"passed":true', '"passed":false'),))
    with Ledger.open(tmp_path / "ledger.db") as led2, pytest.raises(IntegrityError, match="does not verify"):
        promote(led2, fake_run, approver=CARLA)


def test_each_variant_keeps_its_own_suite_result(fake_run, tmp_path):
    """suite-NAME.json judged the final variant (int8), suite-NAME@fp32.json the fp32 model: judging the
    second never hides the first, and each promotion reads the result about its own variant."""
    led = Ledger.open(tmp_path / "ledger.db")
    _suite(fake_run, "quick", True, led.location, variant="int8")
    _suite(fake_run, "quick", False, led.location, variant="fp32", file="suite-quick@fp32.json")
    assert [s["variant"] for s in promote(led, fake_run, approver=CARLA, suite="quick").data["suites"]] == ["int8"]
    assert promote(led, fake_run, approver=CARLA).data["suites"][0]["variant"] == "int8"
    with pytest.raises(PromotionRefused, match="regression suite failed: quick"):
        promote(led, fake_run, approver=CARLA, variant="fp32", suite="quick")
    with pytest.raises(ConfigError, match="plain name"):
        promote(led, fake_run, approver=CARLA, suite="quick@fp32")
    led.close()


@pytest.mark.parametrize("command", [["review", "list"], ["review", "show", "1"], ["review", "stats"],
                                     ["review", "decide", "1", "--approve"], ["ledger", "verify"]])
def test_commands_on_existing_records_need_an_existing_ledger(command, fake_run, tmp_path, capsys):
    led = tmp_path / "nowhere" / "ledger.db"
    assert main([*command, "--ledger", str(led)]) == 2
    assert "no ledger there" in capsys.readouterr().err
    assert not led.exists() and not led.parent.exists()  # a mistyped path never becomes a new, empty ledger
    assert main(["promote", str(fake_run), "--approver", "carla", "--ledger", str(led)]) == 2
    assert not led.parent.exists()


def test_promotion_hashes_only_files_inside_the_run_folder(fake_run, tmp_path, capsys):
    (tmp_path / "elsewhere.safetensors").write_bytes(b"someone else's weights")
    cfg = json.loads((fake_run / "config.json").read_text())
    cfg["variants"]["int8"] = "../../elsewhere.safetensors"
    (fake_run / "config.json").write_text(json.dumps(cfg))
    led = Ledger.open(tmp_path / "ledger.db")
    with pytest.raises(IntegrityError, match="points outside the run folder"):
        promote(led, fake_run, approver=CARLA, variant="int8")
    assert not led.events(kind="model.promoted")


def test_a_decision_is_in_the_ledger_or_not_at_all(tmp_path, monkeypatch):
    led = tmp_path / "ledger.db"
    with ReviewQueue.open(led) as q:
        item = q.enqueue(run="run1", variant="int8", text="x", label="comedy", confidence=0.3, reason="ood")

        def locked(*a, **k):
            raise RuntimeError("database is locked")

        monkeypatch.setattr(q.ledger, "append", locked)
        monkeypatch.setattr(q.ledger, "append_many", locked)  # how enqueue writes (several items at once)
        with pytest.raises(RuntimeError, match="locked"):
            q.decide(item.id, reviewer=ANA, approve=True)
        assert q.get(item.id).status == "open"  # the table change was taken back
        with pytest.raises(RuntimeError, match="locked"):
            q.enqueue(run="run1", text="y", label="comedy", confidence=0.2, reason="ood")
        assert [i.input_text for i in q.list()] == ["x"]
        monkeypatch.undo()
        assert q.decide(item.id, reviewer=ANA, approve=True).status == "approved"


def test_the_review_table_cannot_reopen_or_invent_items(tmp_path, capsys):
    import sqlite3

    led = tmp_path / "ledger.db"
    with ReviewQueue.open(led) as q:
        a = q.enqueue(run="run1", text="x", label="comedy", confidence=0.3, reason="ood").id
        b = q.enqueue(run="run1", text="y", label="comedy", confidence=0.3, reason="ood").id
        q.decide(a, reviewer=ANA, approve=True)
    with sqlite3.connect(led) as db:
        db.execute("UPDATE review_items SET status = 'open', reviewer = NULL, decided = NULL WHERE id = ?", (a,))
        db.execute("UPDATE review_items SET input_text = 'edited' WHERE id = ?", (b,))
        db.execute("INSERT INTO review_items (created, run, input_sha256, input_text, label, confidence, reason) "
                   "VALUES ('t', 'run1', ?, 'z', 'comedy', 0.1, 'ood')", (hashlib.sha256(b"z").hexdigest(),))
    with ReviewQueue.open(led) as q:
        with pytest.raises(ConfigError, match=r"already decided \(ledger event #\d+: approved by ana\)"):
            q.decide(a, reviewer=MALLORY, approve=False, override_label="tragedy")
        with pytest.raises(IntegrityError, match="no longer matches the sha256"):
            q.decide(b, reviewer=MALLORY, approve=True)
        with pytest.raises(IntegrityError, match="no review.enqueued event"):
            q.decide(b + 1, reviewer=MALLORY, approve=True)
    assert [e.data["reviewer"] for e in Ledger.open(led).events(kind="review.decided")] == ["ana"]
    assert main(["review", "show", "99999999999999999999999", "--ledger", str(led)]) == 2
    assert "no such item" in capsys.readouterr().err


def test_run_and_variant_are_escaped_in_review_output(tmp_path, capsys):
    led = tmp_path / "ledger.db"
    with ReviewQueue.open(led) as q:
        q.enqueue(run="r\x1b[31mRED", variant="v\x1b[32mGREEN", text="x", label="a", confidence=0.3, reason="ood")
    for command in (["review", "show", "1"], ["review", "list"]):
        assert main([*command, "--ledger", str(led)]) == 0
        shown = capsys.readouterr().out
        assert "\x1b" not in shown and "\\x1b" in shown


def test_promote_help_says_what_the_guide_says(capsys):
    """issue 19: 'promote --help' said the gate read every suite-*.json in the run folder; the gate (and
    docs/govern.md) use the verdicts the ledger recorded, and the approver is the token's user."""
    from pathlib import Path

    assert main(["promote", "--help"]) == 0
    shown = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert "suite-*.json" not in shown and "--approver" not in shown
    for claim in ("ledger recorded", "newest suite.evaluated event", "NNFORGE_TOKEN", "--token-file", "--key-file",
                  "no_suite", "a reviewer's token"):
        assert claim in shown, claim
    guide = (Path(__file__).resolve().parents[2] / "docs" / "govern.md").read_text(encoding="utf-8")
    gate = guide[guide.index("### Promotion gate"):guide.index("## Web dashboard")]
    for claim in ("NNFORGE_TOKEN", "--token-file", "the newest `suite.evaluated`", "`no_suite: true`", "--revoke",
                  "--suite NAME"):
        assert claim in gate, claim


def test_cli_out_of_scope_and_escalate(fake_run, tmp_path, capsys, tokens):
    led = str(tmp_path / "ledger.db")
    with ReviewQueue.open(led) as q:
        a, b = (q.enqueue(run="run1", text=t, label="comedy", confidence=0.3, reason="ood").id for t in "xy")
    common = ["--ledger", led, "--runs-dir", str(tmp_path / "runs")]
    tokens.act("ana")
    assert main(["review", "decide", str(a), "--out-of-scope", "--escalate", *common]) == 2
    assert main(["review", "decide", str(a), "--out-of-scope", "--note", "a recipe", *common]) == 0
    assert "out_of_scope by ana: (out of scope)" in capsys.readouterr().out
    assert main(["review", "decide", str(b), "--escalate", *common]) == 0
    assert main(["review", "decide", str(b), "--approve", *common]) == 2  # a reviewer cannot decide it now
    assert "an approver or admin decides it" in capsys.readouterr().err
    tokens.act("carla")
    assert main(["review", "decide", str(b), "--override", "tragedy", *common]) == 0
    capsys.readouterr()
    assert main(["review", "stats", "--ledger", led, "--json"]) == 0
    total = json.loads(capsys.readouterr().out)["total"]
    assert (total["out_of_scope"], total["overridden"], total["escalated"], total["open"]) == (1, 1, 0, 0)
    decided = Ledger.open(led).events(kind="review.decided")
    assert [(e.data["item"], e.data["decision"], e.data["user"]["name"]) for e in decided] == [
        (a, "out_of_scope", "ana"), (b, "escalated", "ana"), (b, "overridden", "carla")]
