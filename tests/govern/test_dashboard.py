"""The web dashboard through FastAPI's TestClient: login with a user's name and token, sessions, CSRF and same-origin checks on
every POST, approving and overriding review items (recorded in the ledger), escaping of untrusted text, path
traversal in run/artifact URLs, report CSP, and the ledger page showing a tampered chain. No model is run: each
test builds a tiny ledger and run folder in tmp_path."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys

import pytest

pytest.importorskip("fastapi", reason="the dashboard extra (fastapi) is not installed")

from fastapi.testclient import TestClient  # noqa: E402

from nnforge.cli import main  # noqa: E402
from nnforge.govern import ReviewQueue  # noqa: E402
from nnforge.govern.dashboard import create_app  # noqa: E402
from nnforge.govern.users import User, UserStore  # noqa: E402
from nnforge.ledger import Ledger  # noqa: E402

RUN = "20261128-053421-148a00"
BASE = "http://127.0.0.1"
SAME = {"Origin": BASE}
NASTY = "<script>alert('x')</script><img src=x onerror=alert(1)>"
PNG_1PX = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A ledger with one run's events and three review items, a run folder, users (root admin, ana reviewer,
    carla approver) with their tokens, and a secret outside."""
    monkeypatch.setenv("NNFORGE_SCRYPT_N", "1024")
    ledger_path = tmp_path / ".nnforge" / "ledger.db"
    run_dir = tmp_path / "runs" / RUN
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({
        "run_id": RUN, "created": "2026-11-28T05:34:22+00:00", "final_variant": "int8",
        "label_names": ["comedy", "tragedy", "history"], "recipe": {"name": "quickstart", "description": "demo"}}))
    (run_dir / "metrics.json").write_text(json.dumps({"int8_acc": 0.465, "fp32_acc": 0.47}))
    (run_dir / "report.html").write_text(
        "<!doctype html><html><head><style>h1{color:#123}</style></head><body><h1>Report of the run</h1>"
        f'<img alt="plot" src="data:image/png;base64,{PNG_1PX}"></body></html>')
    (run_dir / "model-int8.safetensors").write_bytes(b"\0" * 64)
    (tmp_path / "secret.txt").write_text("top secret")
    led = Ledger.open(ledger_path, actor="runner")
    led.append("run.started", {"recipe": {"name": "quickstart", "sha256": "ab" * 32, "seed": 0},
                               "run_dir": str(run_dir)}, run=RUN)
    led.append("artifact.written", {"name": "model:int8", "path": str(run_dir / "model-int8.safetensors"),
                                    "sha256": "cd" * 32}, run=RUN)
    led.append("step.finished", {"step": "evaluate", "metrics": {"int8_acc": 0.465, "fp32_acc": 0.47}}, run=RUN)
    led.close()
    with ReviewQueue.open(ledger_path, actor="runner") as q:
        q.enqueue(run=RUN, variant="int8", text="To be, or not to be", label="tragedy", confidence=0.41,
                  reason="low_confidence")
        q.enqueue(run=RUN, variant="int8", text=NASTY, label="comedy", confidence=0.30, reason="ood")
        q.enqueue(run="gone-run", variant="int8", text="A run whose folder is gone", label="comedy",
                  confidence=0.2, reason="audit")
    store = UserStore.for_ledger(ledger_path)
    with Ledger.open(ledger_path) as led:
        tokens = {"root": store.add("root", "admin", by=None, ledger=led)[1]}
        root = store.authenticate(tokens["root"])
        tokens["ana"] = store.add("ana", "reviewer", by=root, ledger=led)[1]
        tokens["carla"] = store.add("carla", "approver", by=root, ledger=led)[1]
    app = create_app(ledger_path, tmp_path / "runs")
    return {"app": app, "token": tokens["ana"], "tokens": tokens, "store": store, "root": root,
            "ledger": ledger_path, "tmp": tmp_path, "run_dir": run_dir}


def test_runs_show_their_status_and_a_damaged_config_is_named_by_file_and_field(site):
    from nnforge import runs

    c = _login(site)
    runs.update_config(site["run_dir"], status="failed")
    assert '<td class="status">failed</td>' in c.get("/").text
    cfg = json.loads((site["run_dir"] / "config.json").read_text())
    (site["run_dir"] / "config.json").write_text(json.dumps({**cfg, "label_names": "comedy"}))
    assert '<td class="status">damaged</td>' in c.get("/").text
    page = c.get(f"/runs/{RUN}")
    assert page.status_code == 200
    assert "config.json: field &#39;label_names&#39; must be a list of strings" in page.text


def _client(site) -> TestClient:
    return TestClient(site["app"], base_url=BASE, follow_redirects=False)


def _login(site, who: str = "ana") -> TestClient:
    c = _client(site)
    r = c.post("/login", data={"username": who, "token": site["tokens"][who]}, headers=SAME)
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = r.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie
    return c


def _csrf(client: TestClient, path: str = "/review") -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', client.get(path).text)
    assert m, f"no CSRF field on {path}"
    return m.group(1)


def _decided(site) -> list:
    led = Ledger.open(site["ledger"])
    try:
        return led.events(kind="review.decided")
    finally:
        led.close()


# --- token and login -------------------------------------------------------------------------------------------


def test_the_user_store_holds_only_salted_hashes(site):
    text = site["store"].path.read_text()
    assert all(t.partition(":")[2] not in text for t in site["tokens"].values())
    assert len(json.loads(text)["users"]["ana"]["hash"]) == 64 and json.loads(text)["users"]["ana"]["salt"]


@pytest.mark.parametrize("path", ["/", "/review", "/review/1", "/ledger", "/lineage", f"/runs/{RUN}",
                                  f"/runs/{RUN}/report", f"/runs/{RUN}/files/config.json"])
def test_every_page_needs_a_session(site, path):
    r = _client(site).get(path)
    assert r.status_code == 303 and r.headers["location"] == "/login"


def test_wrong_missing_and_forged_tokens_are_refused(site):
    c = _client(site)
    for who, bad in [("ana", ""), ("ana", "not-the-token"), ("ana", site["token"] + "x"),
                     ("ana", site["token"].upper()), ("ana", site["tokens"]["carla"]), ("carla", site["token"]),
                     ("", site["token"])]:
        r = c.post("/login", data={"username": who, "token": bad}, headers=SAME)
        assert r.status_code == 401 and "set-cookie" not in r.headers and "not valid" in r.text
    # a forged session cookie is not a session
    c.cookies.set("nnforge_session", "forged-" + "A" * 40)
    assert c.get("/").status_code == 303
    # nor may a POST go through with it
    r = c.post("/review/1/decide", data={"csrf": "x", "action": "approve"}, headers=SAME)
    assert r.status_code == 403 and _decided(site) == []
    # a login from another origin is refused even with the right token
    r = c.post("/login", data={"username": "ana", "token": site["token"]}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "set-cookie" not in r.headers


def test_a_new_token_or_a_removed_user_logs_out_their_sessions(site):
    c, other = _login(site), _login(site, "carla")
    assert c.get("/").status_code == 200 and 'id="whoami">ana (reviewer)<' in c.get("/").text
    with Ledger.open(site["ledger"]) as led:
        new = site["store"].rotate("ana", by=site["root"], ledger=led)
    assert c.get("/").status_code == 303  # old session gone
    assert other.get("/").status_code == 200  # carla's is not
    login = {"username": "ana", "token": site["token"]}
    assert _client(site).post("/login", data=login, headers=SAME).status_code == 401
    assert _client(site).post("/login", data={**login, "token": new}, headers=SAME).status_code == 303
    with Ledger.open(site["ledger"]) as led:
        site["store"].remove("carla", by=site["root"], ledger=led)
    assert other.get("/").status_code == 303


def test_sessions_end_when_idle_and_at_their_maximum_age_however_busy(monkeypatch):
    from nnforge.govern.dashboard import _security

    clock = [1000.0]
    monkeypatch.setattr(_security.time, "monotonic", lambda: clock[0])
    store = _security.SessionStore(idle_s=10.0, max_age_s=25.0)
    ana = User("ana", "reviewer", via="session")
    busy, idle = store.create(ana, "fp"), store.create(ana, "fp")
    for _ in range(4):  # busy is used every 6 s: never idle for 10 s
        clock[0] += 6.0
        assert store.get(busy.id, lambda name: "fp") is busy
    assert store.get(idle.id, lambda name: "fp") is None  # 24 s without a request
    clock[0] += 2.0  # 26 s after login
    assert store.get(busy.id, lambda name: "fp") is None
    assert store.get(busy.id, lambda name: "fp") is None  # forgotten, not revived
    assert store.get(store.create(ana, "fp").id, lambda name: "other-token") is None
    assert store.get(store.create(ana, "fp").id, lambda name: None) is None  # the user was removed


def test_repeated_failed_logins_are_throttled(site):
    c = _client(site)
    codes = [c.post("/login", data={"username": "ana", "token": f"ana:guess{i}"}, headers=SAME).status_code
             for i in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
    # guesses cannot lock the token's owner out (the valid token got 429 too before)
    assert c.post("/login", data={"username": "ana", "token": site["token"]}, headers=SAME).status_code == 303


def test_run_files_are_read_only_inside_the_run_folder(site):
    (site["tmp"] / "outside.json").write_text(json.dumps({"aws_secret": "AKIA-TOPSECRET"}))
    evil = site["tmp"] / "runs" / "symrun"
    evil.mkdir()
    (evil / "metrics.json").symlink_to(site["tmp"] / "outside.json")
    (evil / "config.json").symlink_to(site["tmp"] / "outside.json")
    c = _login(site)
    assert "AKIA-TOPSECRET" not in c.get("/runs/symrun").text and "AKIA-TOPSECRET" not in c.get("/").text
    odd = site["tmp"] / "odd:name.bin"
    odd.write_text("hello")
    r = c.get("/lineage", params={"artifact": str(odd)})
    assert r.status_code == 404 and "no run in the ledger wrote" not in r.text  # the path was hashed before


def test_oversized_bodies_ids_and_fields_are_refused(site):
    c = _login(site)
    csrf = _csrf(c)
    big = c.post("/login", content=b"username=ana&token=" + b"x" * (1 << 20), headers={**SAME,
                 "Content-Type": "application/x-www-form-urlencoded"})
    assert big.status_code == 413 and big.headers["X-Content-Type-Options"] == "nosniff"
    assert c.get("/review/99999999999999999999999").status_code == 404  # an OverflowError (500) before
    r = c.post("/review/1/decide", data={"csrf": csrf, "action": "approve", "note": "n" * 20_000},
               headers=SAME)
    assert r.status_code == 400 and not _decided(site)


def test_logout_needs_csrf_and_ends_the_session(site):
    c = _login(site)
    assert c.post("/logout", data={"csrf": "wrong"}, headers=SAME).status_code == 403
    assert c.get("/").status_code == 200
    assert c.post("/logout", data={"csrf": _csrf(c, "/")}, headers=SAME).status_code == 303
    assert c.get("/").status_code == 303


def test_foreign_host_header_is_refused(site):
    """A DNS-rebinding page (evil.example resolving to 127.0.0.1) cannot read the dashboard."""
    c = _login(site)
    assert c.get("/", headers={"Host": "evil.example"}).status_code == 400


# --- review decisions ------------------------------------------------------------------------------------------


def test_post_without_or_with_wrong_csrf_or_origin_is_refused(site):
    c = _login(site)
    csrf = _csrf(c)
    form = {"action": "approve"}
    assert c.post("/review/1/decide", data=form, headers=SAME).status_code == 403
    assert c.post("/review/1/decide", data={**form, "csrf": csrf[:-2] + "zz"}, headers=SAME).status_code == 403
    r = c.post("/review/1/decide", data={**form, "csrf": csrf}, headers={"Origin": "http://evil.example"})
    assert r.status_code == 403 and "cross-origin" in r.text
    assert c.post("/review/1/decide", data={**form, "csrf": csrf}).status_code == 403  # neither Origin nor Referer
    # another session's CSRF token does not work in this one
    other = _csrf(_login(site))
    assert c.post("/review/1/decide", data={**form, "csrf": other}, headers=SAME).status_code == 403
    assert _decided(site) == []
    with ReviewQueue.open(site["ledger"]) as q:
        assert q.get(1).status == "open"


def test_approve_with_csrf_is_recorded_in_the_ledger_with_the_reviewer(site):
    c = _login(site)
    r = c.post("/review/1/decide", data={"csrf": _csrf(c), "action": "approve", "note": "fine"},
               headers={"Referer": f"{BASE}/review"})  # Referer is accepted when a browser sends no Origin
    assert r.status_code == 303 and r.headers["location"] == "/review/1"
    page = c.get("/review/1").text
    assert 'id="status">approved<' in page and "approved by ana" in page
    events = _decided(site)
    assert len(events) == 1
    assert events[0].actor == "ana" and events[0].data["reviewer"] == "ana" and events[0].data["item"] == 1
    assert events[0].data["decision"] == "approved" and events[0].run == RUN
    # a decision is final: a second one is refused with the reason
    r = c.post("/review/1/decide", data={"csrf": _csrf(c), "action": "approve"}, headers=SAME)
    assert r.status_code == 400 and "already decided" in r.text and len(_decided(site)) == 1


def test_override_checks_the_label_against_the_run(site):
    c = _login(site)
    csrf = _csrf(c)
    form = {"csrf": csrf, "action": "override"}
    r = c.post("/review/1/decide", data={**form, "override_label": "robot"}, headers=SAME)
    assert r.status_code == 400 and "not one of the run&#39;s labels" in r.text
    assert c.post("/review/1/decide", data={**form, "action": "delete"}, headers=SAME).status_code == 400
    # the run of item 3 has no folder: its labels cannot be checked, so no override
    r = c.post("/review/3/decide", data={**form, "override_label": "comedy"}, headers=SAME)
    assert r.status_code == 400 and "cannot check" in r.text
    assert _decided(site) == []
    r = c.post("/review/1/decide", data={**form, "override_label": "history"}, headers=SAME)
    assert r.status_code == 303
    (ev,) = _decided(site)
    assert ev.data["decision"] == "overridden" and ev.data["override_label"] == "history"
    assert "history (override)" in c.get("/review/1").text


def test_html_in_inputs_and_notes_is_escaped(site):
    c = _login(site)
    note = "</td><script>alert(document.cookie)</script>"
    r = c.post("/review/2/decide", data={"csrf": _csrf(c), "action": "approve", "note": note}, headers=SAME)
    assert r.status_code == 303
    for page in (c.get("/review/2").text, c.get("/review?status=all").text):
        assert "<script>" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(document.cookie)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in c.get("/review/2").text
    assert _decided(site)[0].data["note"] == note  # stored verbatim, escaped only when shown


def test_review_pages_list_and_filter(site):
    c = _login(site)
    page = c.get("/review").text
    assert all(f'id="item-{i}"' in page for i in (1, 2, 3)) and "3 open" in page
    assert 'id="override-1"' in page and 'id="override-3"' not in page  # no labels for the missing run
    assert c.get("/review?status=bogus").status_code == 400
    assert c.get("/review/99").status_code == 404


def test_the_queue_counts_are_numbers_not_a_method(site):
    page = _login(site).get("/review").text
    assert "3 items: 3 open" in page and "built-in method" not in page  # was '{{ t.items }}': dict.items


def test_out_of_scope_and_escalate_then_only_an_approver_decides(site):
    c = _login(site)
    r = c.post("/review/1/decide", data={"csrf": _csrf(c), "action": "out-of-scope", "note": "not a play"},
               headers=SAME)
    assert r.status_code == 303 and 'id="status">out_of_scope<' in c.get("/review/1").text
    assert c.post("/review/2/decide", data={"csrf": _csrf(c), "action": "escalate"}, headers=SAME).status_code == 303
    page = c.get("/review/2").text
    assert 'id="status">escalated<' in page and 'id="approve-2"' not in page  # a reviewer cannot decide it now
    r = c.post("/review/2/decide", data={"csrf": _csrf(c), "action": "approve"}, headers=SAME)
    assert r.status_code == 403 and "approver" in r.text
    boss = _login(site, "carla")
    assert 'id="approve-2"' in boss.get("/review/2").text
    assert boss.post("/review/2/decide", data={"csrf": _csrf(boss), "action": "approve"},
                     headers=SAME).status_code == 303
    ledger_page = boss.get("/ledger", params={"kind": "review.decided"}).text
    assert "carla (approver, session) <span class=\"muted\">unsigned</span>" in ledger_page
    events = _decided(site)
    assert [(e.data["item"], e.data["decision"], e.actor, e.data["user"]["via"], e.data["user"]["role"])
            for e in events] == [(1, "out_of_scope", "ana", "session", "reviewer"),
                                 (2, "escalated", "ana", "session", "reviewer"),
                                 (2, "approved", "carla", "session", "approver")]


# --- runs, files, reports --------------------------------------------------------------------------------------


def test_runs_run_page_and_report(site):
    c = _login(site)
    home = c.get("/")
    assert home.status_code == 200 and RUN in home.text and "0.465" in home.text and "verified" in home.text
    for header, value in [("x-frame-options", "DENY"), ("x-content-type-options", "nosniff")]:
        assert home.headers[header] == value
    assert home.headers["content-security-policy"].startswith("default-src 'self'")
    run = c.get(f"/runs/{RUN}")
    assert run.status_code == 200 and "model:int8" in run.text and "comedy, tragedy, history" in run.text
    report = c.get(f"/runs/{RUN}/report")
    assert report.status_code == 200 and "Report of the run" in report.text
    csp = report.headers["content-security-policy"]
    assert "sandbox" in csp and "img-src data:" in csp and "script-src" not in csp and "default-src 'none'" in csp
    cfg = c.get(f"/runs/{RUN}/files/config.json")
    assert cfg.status_code == 200 and cfg.headers["content-type"].startswith("application/json")
    weights = c.get(f"/runs/{RUN}/files/model-int8.safetensors")
    assert weights.status_code == 200 and "attachment" in weights.headers["content-disposition"]
    assert weights.headers["content-type"] == "application/octet-stream"


@pytest.mark.parametrize("path", [
    f"/runs/{RUN}/files/..%2F..%2Fsecret.txt",
    f"/runs/{RUN}/files/%2E%2E/%2E%2E/secret.txt",
    f"/runs/{RUN}/files/%2Fetc%2Fpasswd",
    f"/runs/{RUN}/files//etc/passwd",
    "/runs/..%2Fsecret.txt/report",
    "/runs/%2E%2E/files/secret.txt",
    f"/runs/{RUN}%2F..%2F..%2F/files/secret.txt",
    f"/runs/{RUN}/files/config.json%00.txt",
    f"/runs/{RUN}/files/link-out",
])
def test_path_traversal_is_refused(site, path):
    (site["run_dir"] / "link-out").symlink_to(site["tmp"] / "secret.txt")
    c = _login(site)
    r = c.get(path)
    assert r.status_code == 404, (path, r.status_code)
    assert "top secret" not in r.text and "root:" not in r.text


def test_lineage_page(site):
    c = _login(site)
    r = c.get("/lineage", params={"artifact": f"{RUN}:model:int8"})
    assert r.status_code == 200 and "not approved" in r.text and "this artifact" in r.text
    r = c.get("/lineage", params={"artifact": f"{RUN}:model:<b>x</b>"})
    assert r.status_code == 404 and "no artifact named" in r.text and "<b>x</b>" not in r.text
    # the web form never hashes server-side files
    assert c.get("/lineage", params={"artifact": str(site["tmp"] / "secret.txt")}).status_code == 400


def test_ledger_page_shows_a_tampered_chain(site):
    c = _login(site)
    page = c.get("/ledger").text
    assert "Chain verified" in page and "BROKEN" not in page
    db = sqlite3.connect(site["ledger"])
    body = db.execute("SELECT body FROM events WHERE seq = 2").fetchone()[0]
    db.execute("UPDATE events SET body = ? WHERE seq = 2", (body.replace("cdcd", "eeee", 1),))
    db.commit()
    db.close()
    page = c.get("/ledger").text
    assert "BROKEN at event #2" in page and "was modified" in page and "Chain verified" not in page
    assert "BROKEN at event #2" in c.get("/").text


# --- command line and imports ----------------------------------------------------------------------------------


def test_serve_refusals(tmp_path, capsys):
    led = str(tmp_path / "audit.db")
    assert main(["dashboard", "serve", "--host", "0.0.0.0", "--ledger", led]) == 2
    assert "--allow-remote" in capsys.readouterr().err
    assert main(["dashboard", "serve", "--ledger", led]) == 2  # nobody could log in
    assert "nnforge users add NAME --role admin" in capsys.readouterr().err


def test_dashboard_package_import_is_lean():
    code = ("import sys, nnforge.ledger, nnforge.govern, nnforge.govern.dashboard; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', 'uvicorn', 'jinja2'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ}, timeout=120).stdout.strip()
    assert out == "[]"


@pytest.mark.parametrize(("host", "bind", "header"), [("127.0.0.2", "127.0.0.2", "127.0.0.2:8765"),
                                                       ("[::1]", "::1", "[::1]:8765")])
def test_serve_binds_the_bare_address_and_accepts_its_own_host_header(tmp_path, monkeypatch, host, bind, header):
    import uvicorn

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.setenv("NNFORGE_SCRYPT_N", "1024")
    with Ledger.open(tmp_path / "l.db") as led:
        UserStore.for_ledger(tmp_path / "l.db").add("root", "admin", by=None, ledger=led)
    assert main(["dashboard", "serve", "--host", host, "--ledger", str(tmp_path / "l.db"),
                 "--runs-dir", str(tmp_path)]) == 0
    assert seen["host"] == bind  # "[::1]" failed to bind before
    # the Host header set by hand: starlette 1.3's TestClient cannot parse an IPv6 base_url ("[::1]:8765")
    client = TestClient(seen["app"], follow_redirects=False)
    assert client.get("/login", headers={"host": header}).status_code == 200  # refused (400) before


@pytest.mark.parametrize(("header", "name"), [("[::1]:8765", "[::1]"), ("[::1]", "[::1]"), ("localhost:80", "localhost"),
                                              ("127.0.0.1", "127.0.0.1"), ("EVIL.example:1", "evil.example")])
def test_host_names_lose_only_their_port(header, name):
    from nnforge.govern.dashboard.app import host_name

    assert host_name(header) == name
