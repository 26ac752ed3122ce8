"""``http``: another ``nnforge serve`` server (e.g. a larger model's run), over its ``POST /predict``.

Request: ``{"inputs": [...]}`` with ``Authorization: Bearer <token>``; reply: ``{"predictions": [{"label",
"confidence", "probabilities", "status"}, ...]}``, one per input. The server's own status passes through: only
``answered`` may stand, so an input the server flagged or sent to its review queue goes up. A failed request
(network, timeout, an HTTP error, a reply that does not fit) gives every input of that request the status
``error``, and they go up too. Needs httpx (``pip install 'nnforge[serve]'``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from nnforge.config import Config, config_type
from nnforge.deploy.cascade._tier import ANSWERED, TierAnswer, as_json, register_tier
from nnforge.errors import ConfigError, MissingDependencyError

__all__ = ["HttpTier", "HttpTierOptions", "bearer_token", "http_client"]

log = logging.getLogger(__name__)


def http_client(timeout_s: float) -> Any:
    """An ``httpx.Client`` (imported on use)."""
    try:
        import httpx
    except ImportError as exc:
        raise MissingDependencyError("remote cascade tiers need httpx: pip install 'nnforge[serve]'") from exc
    return httpx.Client(timeout=timeout_s)


def bearer_token(env: str | None, given: str | None, where: str) -> str | None:
    """The token given as an object, else the one in the environment variable ``env`` (which must be set)."""
    if given is not None or env is None:
        return given
    token = os.environ.get(env)
    if not token:
        raise ConfigError(f"{where}: the environment variable {env!r} (token_env) is not set; set it to the token")
    return token


@config_type("deploy.cascade.http")
class HttpTierOptions(Config):
    """Options of an ``http`` tier. The token never sits in the config: name the variable that holds it."""

    url: str = Field(..., pattern=r"^https?://[^\s]+$", description="the server's base URL (POST {url}/predict)")
    token_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                  description="environment variable holding the bearer token")
    timeout_s: float = Field(30.0, gt=0, le=3600, description="longest one request may take")
    batch_size: int = Field(64, ge=1, le=4096, description="inputs per request (the server's max_inputs or less)")


def _prediction(p: Any) -> TierAnswer:
    # nnforge serve withholds the label of an input it sent to its review queue (status "review", label null)
    withheld = isinstance(p, dict) and p.get("status") == "review" and p.get("label") is None
    if not isinstance(p, dict) or not (isinstance(p.get("label"), str) or withheld) or \
            isinstance(p.get("confidence"), bool) or not isinstance(p.get("confidence"), (int, float)):
        raise ValueError(f"a prediction needs a string label and a numeric confidence; got {str(p)[:200]}")
    probs = p.get("probabilities")
    return TierAnswer(p["label"], float(p["confidence"]), str(p.get("status", ANSWERED)),
                      {str(k): float(v) for k, v in probs.items()} if isinstance(probs, dict) else None,
                      {k: v for k, v in p.items() if k not in ("label", "confidence", "status", "probabilities")})


@register_tier("http")
class HttpTier:
    """Another nnforge server.

    Args:
        url: its base URL; the tier posts to ``{url}/predict``.
        token: the bearer token (None: no Authorization header).
        timeout_s: longest one request may take.
        batch_size: inputs per request.
        client: an ``httpx.Client`` to use (default: one of its own, closed by :meth:`close`).
    """

    Options = HttpTierOptions

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 30.0, batch_size: int = 64,
                 client: Any = None) -> None:
        self.endpoint = url.rstrip("/") + "/predict"
        self.batch_size = batch_size
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._own = client is None
        self.client = client if client is not None else http_client(timeout_s)

    @classmethod
    def from_options(cls, options: HttpTierOptions, *, token: str | None = None, client: Any = None) -> HttpTier:
        return cls(options.url, token=bearer_token(options.token_env, token, f"http tier {options.url}"),
                   timeout_s=options.timeout_s, batch_size=options.batch_size, client=client)

    def close(self) -> None:
        if self._own:
            self.client.close()

    def _post(self, rows: list[Any]) -> list[TierAnswer]:
        import httpx

        try:
            reply = self.client.post(self.endpoint, json={"inputs": rows}, headers=self._headers)
            if reply.status_code != 200:
                raise ValueError(f"HTTP {reply.status_code}: {reply.text[:200]}")
            body = reply.json()
            predictions = body.get("predictions") if isinstance(body, dict) else None
            if not isinstance(predictions, list) or len(predictions) != len(rows):
                raise ValueError(f"expected {len(rows)} predictions; got {str(predictions)[:200]}")
            return [_prediction(p) for p in predictions]
        except (httpx.HTTPError, ValueError) as exc:  # the remote tier failed: its inputs go up
            log.warning("http tier %s: %s: %s", self.endpoint, type(exc).__name__, exc)
            return [TierAnswer(None, 0.0, "error", None, {"error": f"{type(exc).__name__}: {exc}"}) for _ in rows]

    def answer(self, inputs: Any, previous: Sequence[TierAnswer | None]) -> list[TierAnswer]:
        rows = [as_json(inputs[i]) for i in range(len(previous))]
        return [a for start in range(0, len(rows), self.batch_size)
                for a in self._post(rows[start:start + self.batch_size])]
