"""Run a web export's page in headless Chromium and collect its predictions (for tests and benchmarks).

The folder is served on 127.0.0.1 by a stdlib HTTP server in a thread (a free port), Chromium is driven by
Selenium through Debian's ``chromedriver``, and the page's ``window.nnforgePredict`` does the work: the
tokenizer, onnxruntime-web and the model all run in the browser.
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nnforge.errors import ConfigError, MissingDependencyError, NnforgeError

__all__ = ["CHROMIUM", "CHROMEDRIVER", "browser_predict", "serve_folder"]

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
_TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".wasm": "application/wasm",
          ".json": "application/json", ".onnx": "application/octet-stream", ".html": "text/html; charset=utf-8"}


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with the MIME types module scripts and WebAssembly need; no request log on stderr."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **_TYPES}

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return


@contextmanager
def serve_folder(folder: str | os.PathLike[str]) -> Iterator[str]:
    """Serve ``folder`` on 127.0.0.1 (a free port) while the block runs; yields the base URL."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, name="nnforge-web-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _driver(profile: str, chromium: str, chromedriver: str) -> Any:
    missing = [p for p in (chromium, chromedriver) if not (os.path.isfile(p) and os.access(p, os.X_OK))]
    if missing:
        raise MissingDependencyError(f"browser_predict needs Chromium and ChromeDriver ({', '.join(missing)} "
                                     "missing): apt-get install chromium chromium-driver")
    try:
        from selenium import webdriver
    except ImportError as exc:
        raise MissingDependencyError("browser_predict drives Chromium with Selenium: pip install selenium "
                                     "(or 'nnforge[dev]')") from exc
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    # the closed network refuses Chromium's background connections: switched off, as the dashboard test does
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    # Selenium Manager must never try to download a driver: the driver's path is given
    return webdriver.Chrome(service=webdriver.ChromeService(executable_path=chromedriver), options=options)


_CALL = """
const done = arguments[arguments.length - 1];
window.nnforgeReady.then(() => window.nnforgePredict(arguments[0]))
  .then(rows => done({rows}), err => done({error: String(err && err.stack || err)}));
"""


def browser_predict(web_dir: str | os.PathLike[str], inputs: Sequence[Any], *, timeout: float = 300,
                    chromium: str = CHROMIUM, chromedriver: str = CHROMEDRIVER) -> list[dict[str, Any]]:
    """The page's predictions for ``inputs`` (texts, or flat lists of numbers for a tensor classifier), computed in
    headless Chromium: ``[{"label", "confidence", "probabilities": {label: p}}, ...]`` in input order.

    Raises:
        ConfigError: ``web_dir`` is not a web export.
        MissingDependencyError: Chromium, ChromeDriver or Selenium is missing (the message names the install).
        NnforgeError: the page failed (its error message, from the browser) or took longer than ``timeout`` s.
    """
    folder = Path(web_dir)
    if not (folder / "index.html").is_file() or not (folder / "export.json").is_file():
        raise ConfigError(f"{folder}: not a web export (no index.html and export.json); write one with "
                          "`nnforge export RUN --format web`")
    if isinstance(inputs, str):
        raise ConfigError("browser_predict takes a list of inputs (texts), not one string")
    profile = tempfile.mkdtemp(prefix="nnforge-chromium-")
    try:
        driver = _driver(profile, chromium, chromedriver)
        try:
            driver.set_page_load_timeout(60)
            driver.set_script_timeout(timeout)
            with serve_folder(folder) as url:
                driver.get(url + "index.html")
                result = driver.execute_async_script(_CALL, list(inputs))
        except Exception as exc:
            if isinstance(exc, NnforgeError):
                raise
            raise NnforgeError(f"the web page in {folder} did not answer in Chromium: {type(exc).__name__}: "
                               f"{str(exc).strip()[:400]}") from exc
        finally:
            driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    if not isinstance(result, dict) or "rows" not in result:
        error = result.get("error") if isinstance(result, dict) else result
        raise NnforgeError(f"the web page in {folder} failed in Chromium: {error}")
    return list(result["rows"])
