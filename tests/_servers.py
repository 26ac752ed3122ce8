"""An ASGI app on a free 127.0.0.1 port for the length of a ``with`` block (uvicorn in a thread), for tests."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running(app: Any, timeout: float = 30) -> Iterator[str]:
    """Serve ``app``; yields its base URL; stops it (lifespan shutdown included) on leaving."""
    import uvicorn

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", ws="none"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.time() + timeout
    while not srv.started:
        assert time.time() < deadline and t.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        t.join(timeout=timeout)
