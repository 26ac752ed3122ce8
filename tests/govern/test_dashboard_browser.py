"""The dashboard end to end in headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
Selenium): log in with the token, open the review queue, approve an item as a named reviewer, see it approved,
find the decision in the ledger, and keep a screenshot. Skips when Chromium is absent, except under ``CI=true``
where its absence is a failure."""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time

import pytest

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
RUN = "20261128-053421-148a00"


def _need_browser() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    try:
        import selenium  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        missing.append(f"python package {exc.name}")
    if missing:
        why = (f"browser test needs {', '.join(missing)} (apt-get install chromium chromium-driver; "
               "pip install 'nnforge[dashboard,dev]')")
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true: {why}")
        pytest.skip(why)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A dashboard on a free 127.0.0.1 port (uvicorn in a thread) over a tiny ledger, queue and run folder."""
    _need_browser()
    import uvicorn

    from nnforge.govern import ReviewQueue
    from nnforge.govern.dashboard import create_app
    from nnforge.govern.users import UserStore
    from nnforge.ledger import Ledger

    ledger_path = tmp_path / "ledger.db"
    run_dir = tmp_path / "runs" / RUN
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps({"run_id": RUN, "final_variant": "int8",
                                                     "label_names": ["comedy", "tragedy", "history"]}))
    (run_dir / "report.html").write_text("<html><body><h1>Report</h1></body></html>")
    Ledger.open(ledger_path, actor="runner").append("run.started", {"recipe": {"name": "quickstart"}}, run=RUN)
    with ReviewQueue.open(ledger_path, actor="runner") as q:
        q.enqueue(run=RUN, variant="int8", text="Now is the winter of our discontent <script>x()</script>",
                  label="history", confidence=0.38, reason="low_confidence")
    monkeypatch.setenv("NNFORGE_SCRYPT_N", "1024")
    store = UserStore.for_ledger(ledger_path)
    with Ledger.open(ledger_path) as led:
        root = store.authenticate(store.add("root", "admin", by=None, ledger=led)[1])
        token = store.add("ana", "reviewer", by=root, ledger=led)[1]
    port = _free_port()
    config = uvicorn.Config(create_app(ledger_path, tmp_path / "runs"), host="127.0.0.1", port=port,
                            log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 10 s")
        time.sleep(0.05)
    yield {"url": f"http://127.0.0.1:{port}", "token": token, "ledger": ledger_path}
    srv.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def browser(tmp_path):
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must never try to download a driver
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--window-size=1280,900", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    driver.implicitly_wait(10)  # a click that submits a form returns before the next page is there
    yield driver
    driver.quit()
    shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


@pytest.mark.timeout(300)  # the fixtures quit chromedriver and Chromium and stop the server however it ends
def test_reviewer_logs_in_and_approves_an_item_in_chromium(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    from nnforge.ledger import Ledger

    def wait_for_url(expected: str) -> None:  # fails with a TimeoutException naming nothing: say what we waited for
        try:
            WebDriverWait(browser, 10).until(EC.url_to_be(expected))
        except Exception:
            pytest.fail(f"the browser did not reach {expected} within 10 s (at {browser.current_url})")

    url = server["url"]
    browser.get(url + "/review")
    wait_for_url(url + "/login")  # no session: sent to the login form
    browser.find_element(By.ID, "username").send_keys("ana")
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "login").click()
    assert "not valid" in browser.find_element(By.ID, "error").text
    browser.find_element(By.ID, "username").send_keys("ana")
    browser.find_element(By.ID, "token").send_keys(server["token"])
    browser.find_element(By.ID, "login").click()
    wait_for_url(url + "/")
    assert RUN in browser.find_element(By.ID, "runs").text
    # the session cookie is not readable by scripts (HttpOnly)
    assert browser.execute_script("return document.cookie") == ""

    browser.find_element(By.LINK_TEXT, "Review queue").click()
    row = browser.find_element(By.ID, "item-1")
    assert "<script>x()</script>" in row.text  # shown as text, not run
    form = browser.find_element(By.ID, "approve-1")
    form.find_element(By.NAME, "note").send_keys("reads like Richard III")
    form.find_element(By.NAME, "approve").click()

    wait_for_url(url + "/review/1")
    assert browser.find_element(By.ID, "status").text == "approved"
    assert "approved by ana" in browser.find_element(By.ID, "decision").text
    shot = tmp_path / "dashboard-approved.png"
    assert browser.save_screenshot(str(shot))
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000

    led = Ledger.open(server["ledger"])
    try:
        (ev,) = led.events(kind="review.decided")
        assert led.verify().ok
    finally:
        led.close()
    assert ev.actor == "ana" and ev.data["decision"] == "approved" and ev.data["note"] == "reads like Richard III"
    assert ev.data["user"] == {"name": "ana", "role": "reviewer", "via": "session", "key": None}

    browser.get(url + "/ledger")
    assert "Chain verified" in browser.find_element(By.ID, "verification").text
