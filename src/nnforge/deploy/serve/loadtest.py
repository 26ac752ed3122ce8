"""A bounded load test for a server on this machine: N concurrent clients for T seconds (asyncio + httpx).

Each client sends one request at a time (one input, drawn in turn from ``inputs``), waits for its answer and
sends the next: a closed loop, so throughput is what the server sustains at that concurrency. Latency is
measured per request from send to the full reply. Only loopback URLs are accepted, with at most
:data:`MAX_CLIENTS` clients for at most :data:`MAX_SECONDS`: this is a tool for measuring your own server, not
for loading someone else's.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

from nnforge.errors import ConfigError, DataError

__all__ = ["LoadResult", "load_test", "MAX_CLIENTS", "MAX_SECONDS", "check_loopback"]

MAX_CLIENTS = 256
MAX_SECONDS = 600.0


def check_loopback(url: str) -> str:
    """``url`` if it is http(s) on a loopback address; ConfigError otherwise."""
    parts = urlsplit(url)
    host = (parts.hostname or "").strip("[]")
    try:
        loop = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loop = False
    if parts.scheme not in ("http", "https") or not loop:
        raise ConfigError(f"load test: {url!r} is not an http(s) URL on this machine (127.0.0.1, ::1, localhost); "
                          "the load test only measures local servers")
    return url.rstrip("/")


@dataclass
class LoadResult:
    """What the clients saw: requests answered (2xx), errors by status or exception, latency percentiles."""

    clients: int
    seconds: float
    requests: int
    ok: int
    errors: dict[str, int]
    rps: float
    p50_ms: float
    p99_ms: float
    latencies_ms: list[float] = field(repr=False, default_factory=list)
    replies: list[dict[str, Any]] = field(repr=False, default_factory=list)

    def to_dict(self, latencies: bool = False) -> dict[str, Any]:
        d = asdict(self)
        d.pop("replies")
        if not latencies:
            d.pop("latencies_ms")
        return d


def _pct(xs: Sequence[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


async def _run(url: str, token: str | None, inputs: Sequence[Any], clients: int, seconds: float,
               timeout: float, keep: bool, body: Callable[[Any], Any]) -> LoadResult:
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    lat: list[float] = []
    errors: Counter[str] = Counter()
    replies: list[dict[str, Any]] = []
    ok = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=timeout, limits=limits) as http:
        stop = time.perf_counter() + seconds

        async def client(k: int) -> None:
            nonlocal ok
            i = k
            while time.perf_counter() < stop:
                x = inputs[i % len(inputs)]
                i += clients
                t0 = time.perf_counter()
                try:
                    r = await http.post("/predict", json=body(x))
                except httpx.HTTPError as exc:
                    errors[type(exc).__name__] += 1
                    continue
                dt = (time.perf_counter() - t0) * 1000
                if r.is_success:
                    ok += 1
                    lat.append(dt)
                    if keep:
                        replies.append({"input": x, "reply": r.json()})
                else:
                    errors[str(r.status_code)] += 1

        t_start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        elapsed = time.perf_counter() - t_start
    n = ok + sum(errors.values())
    return LoadResult(clients, round(elapsed, 3), n, ok, dict(errors), round(ok / elapsed, 2),
                      round(_pct(lat, 0.5), 3), round(_pct(lat, 0.99), 3), lat, replies)


def load_test(url: str, inputs: Sequence[Any], *, token: str | None = None, clients: int = 16,
              seconds: float = 10.0, timeout: float = 30.0, keep_replies: bool = False,
              body: Callable[[Any], Any] | None = None) -> LoadResult:
    """Drive ``url``'s ``/predict`` with ``clients`` concurrent closed-loop clients for ``seconds``.

    Args:
        inputs: what to send, one per request, in turn (each client starts at its own offset).
        body: the JSON body for one input (default ``{"inputs": [x]}``, nnforge's own API).
        keep_replies: keep every (input, reply) pair in :attr:`LoadResult.replies` (for checking them later).

    Raises:
        ConfigError: a URL off this machine, or clients / seconds outside the bounds.
    """
    url = check_loopback(url)
    if isinstance(clients, bool) or not isinstance(clients, int) or not 1 <= clients <= MAX_CLIENTS:
        raise ConfigError(f"load test: clients must be 1..{MAX_CLIENTS}; got {clients!r}")
    if not 0 < seconds <= MAX_SECONDS:
        raise ConfigError(f"load test: seconds must be in (0, {MAX_SECONDS:g}]; got {seconds!r}")
    if not inputs:
        raise DataError("load test: no inputs to send")
    return asyncio.run(_run(url, token, list(inputs), clients, float(seconds), timeout, keep_replies,
                            body or (lambda x: {"inputs": [x]})))

