from __future__ import annotations

import hashlib
import json
import sqlite3
import stat

import pytest

from nnforge.cli import main
from nnforge.errors import ConfigError, IntegrityError
from nnforge.ledger import (
    GENESIS,
    SIGNED_EVENT_KIND,
    Ledger,
    SignedHead,
    canonical_json,
    generate_keypair,
    load_signed_head,
    sign_head,
    verify_signed_head,
    write_signed_head,
)

pytest.importorskip("cryptography")


@pytest.fixture
def setup(tmp_path):
    led = Ledger.open(tmp_path / "ledger.db", actor="tester")
    for i in range(8):
        led.append("note", {"i": i})
    priv, pub = generate_keypair(tmp_path / "keys")
    return led, priv, pub


def _rewrite_from(led: Ledger, start: int) -> None:
    """An attacker with write access: change event ``start`` and recompute every hash after it."""
    conn = sqlite3.connect(led.location)
    rows = conn.execute("SELECT seq, hash, body FROM events ORDER BY seq").fetchall()
    prev = GENESIS
    for seq, hash_, body in rows:
        if seq >= start:
            doc = json.loads(body)
            doc["prev"] = prev
            if seq == start:
                doc["data"]["i"] = -1
            body = canonical_json(doc)
            hash_ = hashlib.sha256(body.encode()).hexdigest()
            conn.execute("UPDATE events SET hash = ?, body = ? WHERE seq = ?", (hash_, body, seq))
        prev = hash_
    conn.commit()
    conn.close()


def test_keygen_sign_verify_round_trip_and_recorded_event(setup, tmp_path):
    led, priv, pub = setup
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    signed = sign_head(led, priv)
    assert signed.seq == 8 and signed.head != led.head()  # the ledger.signed event is the new head
    ev = led.events(kind=SIGNED_EVENT_KIND)
    assert len(ev) == 1 and ev[0].data == signed.to_dict() and ev[0].seq == 9
    write_signed_head(signed, tmp_path / "head.json")
    again = load_signed_head(tmp_path / "head.json")
    assert again == signed
    led.append("note", {"later": True})  # appending after signing keeps the signed head valid
    check = verify_signed_head(led, again, pub)
    assert check.ok and check.signature_ok and check.chain is not None and check.chain.events == 10


def test_rewritten_and_rehashed_chain_fails(setup):
    led, priv, pub = setup
    signed = sign_head(led, priv)
    _rewrite_from(led, 3)
    assert led.verify().ok  # internally consistent again ...
    check = verify_signed_head(led, signed, pub)  # ... but not against the signature
    assert not check.ok and check.signature_ok and "not in the chain" in check.reason


def test_truncated_ledger_fails(setup):
    led, priv, pub = setup
    signed = sign_head(led, priv)
    with sqlite3.connect(led.location) as conn:
        conn.execute("DELETE FROM events WHERE seq >= 7")
    assert led.verify().ok
    assert not verify_signed_head(led, signed, pub).ok


def test_other_key_and_tampered_file_fail(setup, tmp_path):
    led, priv, pub = setup
    signed = sign_head(led, priv)
    _, other_pub = generate_keypair(tmp_path / "other")
    check = verify_signed_head(led, signed, other_pub)
    assert not check.ok and "signed by key" in check.reason
    # an attacker re-signs a rewritten chain with their own key and edits the signer field
    other_priv = tmp_path / "other" / "ledger_ed25519.pem"
    forged = sign_head(led, other_priv, record=False)
    assert not verify_signed_head(led, forged, pub).ok
    forged_signer = SignedHead(**{**forged.to_dict(), "signer": signed.signer})
    check = verify_signed_head(led, forged_signer, pub)
    assert not check.ok and "altered" in check.reason
    for field, value in (("seq", 7), ("head", "0" * 64), ("time", "2020-01-01T00:00:00+00:00")):
        tampered = SignedHead(**{**signed.to_dict(), field: value})
        check = verify_signed_head(led, tampered, pub)
        assert not check.ok and not check.signature_ok, field


def test_bad_inputs(setup, tmp_path):
    led, priv, pub = setup
    with pytest.raises(ConfigError, match="already exists"):
        generate_keypair(priv.parent)
    with pytest.raises(ConfigError, match="no private key"):
        sign_head(led, tmp_path / "missing.pem")
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="PEM private key"):
        sign_head(led, tmp_path / "junk.pem")
    with pytest.raises(ConfigError, match="PEM public key"):
        verify_signed_head(led, sign_head(led, priv, record=False), priv)  # private key passed as public
    (tmp_path / "bad.json").write_text(json.dumps({"head": "x"}))
    with pytest.raises(ConfigError, match="missing field"):
        load_signed_head(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="empty"):
        sign_head(Ledger.open(tmp_path / "empty.db"), priv)
    with sqlite3.connect(led.location) as conn:
        conn.execute("UPDATE events SET body = replace(body, '\"i\":2', '\"i\":5') WHERE seq = 3")
    with pytest.raises(IntegrityError, match="broken chain"):
        sign_head(led, priv)


def test_cli_exit_codes(tmp_path):
    db = str(tmp_path / "l.db")
    led = Ledger.open(db)
    for i in range(4):
        led.append("note", {"i": i})
    keys = tmp_path / "keys"
    assert main(["ledger", "keygen", "--out", str(keys)]) == 0
    priv, pub = str(keys / "ledger_ed25519.pem"), str(keys / "ledger_ed25519.pub.pem")
    head_json = str(tmp_path / "head.json")
    assert main(["ledger", "sign", "--ledger", db, "--key", priv, "--out", head_json]) == 0
    verify = ["ledger", "verify", "--ledger", db, "--signed", head_json, "--public-key", pub]
    assert main(verify) == 0
    # bad input: exit 2
    assert main(["ledger", "verify", "--ledger", db, "--signed", head_json]) == 2
    assert main([*verify[:-1], str(tmp_path / "nope.pem")]) == 2
    (tmp_path / "junk.json").write_text("{not json")
    assert main(["ledger", "verify", "--ledger", db, "--signed", str(tmp_path / "junk.json"), "--public-key", pub]) == 2
    assert main(["ledger", "sign", "--ledger", db, "--key", str(tmp_path / "nope.pem")]) == 2
    # mismatch: exit 1
    _rewrite_from(led, 2)
    assert main(["ledger", "verify", "--ledger", db]) == 0
    assert main(verify) == 1
