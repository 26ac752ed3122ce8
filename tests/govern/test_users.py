"""Named users with roles: the user store (hashed tokens, bootstrap, roles, rotation, removal, expiry), signed
decisions, the ``nnforge users`` commands, the CLI reading tokens from the environment or a file, and the Roles
figure of issue 19 (200 decisions all by authenticated users, 100 forged or missing credentials all refused)."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from nnforge.cli import main
from nnforge.errors import ConfigError
from nnforge.govern import ReviewQueue
from nnforge.govern.users import AccessDenied, UserStore, require, simulate_review, verify_decision
from nnforge.ledger import Ledger, generate_keypair
from nnforge.ledger.signing import public_key_pem


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch):
    monkeypatch.setenv("NNFORGE_SCRYPT_N", "1024")  # the documented test setting; the default is 2**15
    monkeypatch.delenv("NNFORGE_TOKEN", raising=False)
    monkeypatch.delenv("NNFORGE_KEY", raising=False)


@pytest.fixture
def ws(tmp_path):
    led = Ledger.open(tmp_path / "ledger.db")
    store = UserStore.for_ledger(tmp_path / "ledger.db")
    root_token = store.add("root", "admin", by=None, ledger=led)[1]
    yield {"led": led, "store": store, "root": store.authenticate(root_token), "root_token": root_token,
           "tmp": tmp_path}
    led.close()


def test_tokens_are_stored_as_salted_hashes_and_checked(ws):
    store, root = ws["store"], ws["root"]
    user, token = store.add("ana", "reviewer", by=root, ledger=ws["led"])
    assert store.path == ws["tmp"] / "users.json" and token.startswith("ana:")
    text = store.path.read_text()
    assert token.partition(":")[2] not in text
    rec = json.loads(text)["users"]["ana"]
    assert rec["kdf"] == "scrypt" and rec["n"] == 1024 and len(rec["salt"]) == 32 and len(rec["hash"]) == 64
    assert store.authenticate(token) == type(user)("ana", "reviewer", via="token")
    for bad in (None, "", "ana", "ana:" + "x" * 43, token + "x", "nobody:" + token.partition(":")[2], token.upper()):
        with pytest.raises(AccessDenied):
            store.authenticate(bad)
    # a second user with the same token secret still gets a different hash (salted)
    assert json.loads(store.path.read_text())["users"]["root"]["salt"] != rec["salt"]


def test_the_store_file_follows_the_umask(ws):
    import os

    old = os.umask(0o027)
    try:
        ws["store"].add("ana", "reviewer", by=ws["root"], ledger=ws["led"])
    finally:
        os.umask(old)
    assert ws["store"].path.stat().st_mode & 0o777 == 0o640  # 0o666 & ~0o027: no hash is readable by others


def test_bootstrap_only_on_an_empty_store_that_never_had_users(ws):
    store, led = ws["store"], ws["led"]
    with pytest.raises(AccessDenied, match="admin's token"):
        store.add("eve", "admin", by=None, ledger=led)
    store.path.unlink()  # deleting the store does not make anyone admin again
    with pytest.raises(AccessDenied, match="user store was removed"):
        store.add("eve", "admin", by=None, ledger=led)
    fresh = UserStore.for_ledger(ws["tmp"] / "other" / "ledger.db")
    with Ledger.open(ws["tmp"] / "other" / "ledger.db") as other, pytest.raises(ConfigError, match="must be an admin"):
        fresh.add("eve", "reviewer", by=None, ledger=other)
    kinds = [(e.kind, e.data["name"], e.data["bootstrap"]) for e in led.events(kind="user.added")]
    assert kinds == [("user.added", "root", True)]


def test_roles_rotation_removal_and_expiry(ws):
    store, root, led = ws["store"], ws["root"], ws["led"]
    ana_token = store.add("ana", "reviewer", by=root, ledger=led)[1]
    carla_token = store.add("carla", "approver", by=root, ledger=led)[1]
    dora_token = store.add("dora", "reviewer", by=root, ledger=led, expires_days=1)[1]
    ana, carla = store.authenticate(ana_token), store.authenticate(carla_token)
    assert require(ana, "review") is ana and require(carla, "promote") is carla
    with pytest.raises(AccessDenied, match="ana is a reviewer and promote needs the approver role"):
        require(ana, "promote")
    with pytest.raises(AccessDenied, match="needs the admin role"):
        store.add("x", "admin", by=carla, ledger=led)
    with pytest.raises(AccessDenied, match="no authenticated user"):
        require(type(ana)("ana", "admin"), "review")  # a record read or made by hand authenticates nobody
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=2)
    assert store.authenticate(dora_token).name == "dora"
    with pytest.raises(AccessDenied, match="expired"):
        store.authenticate(dora_token, now=later)
    new = store.rotate("ana", by=ana, ledger=led)  # a user may rotate their own token
    with pytest.raises(AccessDenied):
        store.authenticate(ana_token)
    assert store.authenticate(new).name == "ana"
    with pytest.raises(AccessDenied):
        store.rotate("carla", by=store.authenticate(new), ledger=led)  # but not another's
    store.remove("carla", by=root, ledger=led)
    with pytest.raises(AccessDenied):
        store.authenticate(carla_token)
    with pytest.raises(ConfigError, match="last admin"):
        store.remove("root", by=root, ledger=led)
    assert [e.kind for e in led.events() if e.kind.startswith("user.")][-2:] == ["user.token_rotated", "user.removed"]
    assert all(e.data["by"]["name"] in ("root", "ana") for e in led.events() if e.kind != "user.added"
               or not e.data["bootstrap"])


def test_signed_decisions_name_the_key_and_detect_edits(ws):
    store, root, led = ws["store"], ws["root"], ws["led"]
    priv, pub = generate_keypair(ws["tmp"] / "keys")
    other, _ = generate_keypair(ws["tmp"] / "other-keys")
    token = store.add("ben", "reviewer", by=root, ledger=led, public_key=public_key_pem(pub))[1]
    ben = store.authenticate(token)
    with ReviewQueue.open(ws["tmp"] / "ledger.db") as q:
        ids = [q.enqueue(run="r", text=f"t{i}", label="a", confidence=0.3, reason="ood").id for i in range(3)]
        with pytest.raises(AccessDenied, match="registered signing key"):
            q.decide(ids[0], reviewer=ben, approve=True)  # a keyed user acting with a token must sign
        with pytest.raises(AccessDenied, match="not ben's registered key"):
            q.decide(ids[0], reviewer=ben, approve=True, key_file=other)
        assert q.get(ids[0]).status == "open"
        q.decide(ids[0], reviewer=ben, decision="out-of-scope", key_file=priv)
        (ev,) = q.ledger.events(kind="review.decided")
    assert ev.data["signature"]["key"] == ben.key_fingerprint and verify_decision(ev, store) == "signed"
    forged = type(ev)(**{**ev.__dict__, "data": {**ev.data, "decision": "approved"}})
    assert verify_decision(forged, store) == "bad"


def test_cli_users_commands_and_tokens_from_env_or_file(tmp_path, monkeypatch, capsys):
    led = str(tmp_path / "ledger.db")
    assert main(["users", "add", "root", "--role", "admin", "--ledger", led]) == 0  # bootstrap
    root_token = capsys.readouterr().out.strip()
    assert root_token.startswith("root:")
    assert main(["users", "add", "ana", "--role", "reviewer", "--ledger", led]) == 2  # no token now
    assert "no token given" in capsys.readouterr().err
    (tmp_path / "root.token").write_text(root_token + "\n")
    (tmp_path / "root.token").chmod(0o644)
    common = ["--ledger", led, "--token-file", str(tmp_path / "root.token")]
    assert main(["users", "add", "ana", "--role", "reviewer", *common]) == 0
    assert "can be read by other users (mode 644)" in capsys.readouterr().err
    (tmp_path / "root.token").chmod(0o600)
    assert main(["users", "add", "ben", "--role", "reviewer", *common]) == 0
    ben_out = capsys.readouterr()
    assert "can be read by other users" not in ben_out.err
    assert main(["users", "remove", "ben", *common]) == 0
    assert main(["users", "add", "ana", "--role", "reviewer", *common]) == 2  # exists
    capsys.readouterr()
    assert main(["users", "token", "ana", *common]) == 0
    ana_token = capsys.readouterr().out.strip()
    assert main(["users", "add", "carla", "--role", "approver", "--key", "--key-dir", str(tmp_path / "k"),
                 *common]) == 0
    assert "private key:" in capsys.readouterr().err and (tmp_path / "k" / "ledger_ed25519.pem").is_file()
    assert main(["users", "add", "bad name", "--role", "reviewer", *common]) == 2
    assert main(["users", "add", "x", "--role", "boss", *common]) == 2
    monkeypatch.setenv("NNFORGE_TOKEN", ana_token)
    assert main(["users", "add", "mallory", "--role", "admin", "--ledger", led]) == 2  # a reviewer
    assert "needs the admin role" in capsys.readouterr().err
    assert main(["users", "token", "ana", "--ledger", led]) == 0  # her own
    monkeypatch.setenv("NNFORGE_TOKEN", capsys.readouterr().out.strip())
    assert main(["users", "remove", "carla", "--ledger", led]) == 2
    assert main(["users", "remove", "carla", *common]) == 0
    assert main(["users", "list", "--ledger", led, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(u["name"], u["role"]) for u in listed] == [("ana", "reviewer"), ("root", "admin")]
    kinds = [e.kind for e in Ledger.open(led).events()]
    assert kinds == ["user.added", "user.added", "user.added", "user.removed", "user.token_rotated", "user.added",
                     "user.token_rotated", "user.removed"]


def test_the_roles_figure(tmp_path):
    """Issue 19's figure: every one of 200 decisions carries an authenticated user; 100 forged or missing
    credentials (wrong token, a reviewer's token to promote or add a user, an expired token, no token, a rotated
    token, a removed user's token) are all refused with nothing written."""
    fig = simulate_review(tmp_path / "ws", decisions=200, forged=100)
    assert fig["decisions"] == 200 and fig["decisions_with_authenticated_user"] == 200
    assert fig["forged_credentials_tried"] == 100 and fig["forged_credentials_refused"] == 100
    assert fig["decisions_signed"] > 0  # ben's decisions, signed with his registered key


def test_cli_audit_names_who_decided_and_catches_an_edited_signed_decision(tmp_path, capsys):
    import sqlite3

    fig = simulate_review(tmp_path, decisions=6, forged=0)
    assert fig["decisions"] == 6
    led = str(tmp_path / "ledger.db")
    assert main(["users", "audit", "--ledger", led, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decisions"] == 6 and report["bad"] == 0 and report["none"] == 0 and report["signed"] >= 1
    assert {r["user"] for r in report["events"]} == {"ana", "ben", "carla"}
    seq = next(r["seq"] for r in report["events"] if r["signature"] == "signed")
    with sqlite3.connect(led) as db:  # the signed decision's note is rewritten (the chain breaks too)
        body = db.execute("SELECT body FROM events WHERE seq = ?", (seq,)).fetchone()[0]
        db.execute("UPDATE events SET body = ? WHERE seq = ?", (body.replace("simulated", "forged"), seq))
    assert main(["users", "audit", "--ledger", led]) == 1
    assert f"#{seq}" in capsys.readouterr().err


def test_actor_is_no_longer_taken_on_trust(ws, monkeypatch, capsys):
    from nnforge.cli.users import acting_name

    led = str(ws["tmp"] / "ledger.db")
    assert acting_name(led, None, None) is None  # a job without a token: recorded as the OS user, as before
    with pytest.raises(AccessDenied, match="deprecated"):
        acting_name(led, None, "ops")
    monkeypatch.setenv("NNFORGE_TOKEN", ws["root_token"])
    assert acting_name(led, None, None) == "root" and acting_name(led, None, "root") == "root"
    with pytest.raises(AccessDenied, match="not the authenticated user"):
        acting_name(led, None, "ops")
    monkeypatch.delenv("NNFORGE_TOKEN")
    assert main(["dashboard", "serve", "--ledger", led, "--actor", "ops"]) == 2  # refused before serving
    assert "deprecated" in capsys.readouterr().err
