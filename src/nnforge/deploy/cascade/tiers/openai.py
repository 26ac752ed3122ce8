"""``openai``: any OpenAI-compatible chat endpoint (a hosted model, vLLM, llama.cpp's server, …).

One ``POST {base_url}/v1/chat/completions`` per input: a system message lists the labels and asks for exactly
one of them, the user message is the input (a string as is, anything else as JSON). The reply's text is
matched to a label: the whole reply (case, spaces, quotes and a final full stop ignored), else the one label it
names as a word; a reply naming none or several has the status ``unparsed`` and goes up. Confidence: the
probability of the reply's tokens when the endpoint returns ``logprobs`` (asked for unless ``logprobs: false``);
an endpoint that returns none gives 1.0, so its answers always stand (``detail["confidence"]`` says so). A
failed request gives the status ``error``. Needs httpx (``pip install 'nnforge[serve]'``).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from typing import Any

from pydantic import Field

from nnforge.config import Config, config_type
from nnforge.deploy.cascade._tier import ANSWERED, TierAnswer, as_text, register_tier
from nnforge.deploy.cascade.tiers.http import bearer_token, http_client

__all__ = ["OpenAITier", "OpenAITierOptions", "parse_label"]

log = logging.getLogger(__name__)


@config_type("deploy.cascade.openai")
class OpenAITierOptions(Config):
    """Options of an ``openai`` tier. The API key never sits in the config: name the variable that holds it."""

    base_url: str = Field(..., pattern=r"^https?://[^\s]+$", description="the server (POST {base_url}/v1/chat/"
                                                                         "completions; a trailing /v1 is allowed)")
    model: str = Field(..., min_length=1, description="the model name the endpoint expects")
    labels: list[str] = Field(..., min_length=2, description="the classes to choose from")
    task: str = Field("Classify the input.", min_length=1, description="what the labels mean, for the prompt")
    api_key_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                                    description="environment variable holding the API key")
    logprobs: bool = Field(True, description="ask for token log-probabilities (the confidence)")
    max_tokens: int = Field(16, ge=1, le=4096)
    timeout_s: float = Field(60.0, gt=0, le=3600, description="longest one request may take")


def _norm(text: str) -> str:
    return text.strip().strip("\"'`*").rstrip(".").strip().casefold()


def parse_label(reply: str, labels: Sequence[str]) -> str | None:
    """The label ``reply`` names: the whole reply, else the one label it contains as a word; None otherwise."""
    whole = [label for label in labels if _norm(label) == _norm(reply)]
    if whole:
        return whole[0]
    text = reply.casefold()
    named = [label for label in labels
             if re.search(rf"(?<![\w]){re.escape(label.casefold())}(?![\w])", text)]
    return named[0] if len(named) == 1 else None


@register_tier("openai")
class OpenAITier:
    """An OpenAI-compatible chat endpoint as a classifier over ``options.labels``.

    Args:
        options: the tier's options.
        api_key: the bearer key (None: no Authorization header).
        client: an ``httpx.Client`` to use (default: one of its own, closed by :meth:`close`).
    """

    Options = OpenAITierOptions

    def __init__(self, options: OpenAITierOptions, *, api_key: str | None = None, client: Any = None) -> None:
        self.options = options
        base = options.base_url.rstrip("/")
        self.endpoint = (base if base.endswith("/v1") else base + "/v1") + "/chat/completions"
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own = client is None
        self.client = client if client is not None else http_client(options.timeout_s)
        self.system = (f"{options.task} Answer with exactly one of these labels and nothing else: "
                       + ", ".join(options.labels) + ".")

    @classmethod
    def from_options(cls, options: OpenAITierOptions, *, api_key: str | None = None,
                     client: Any = None) -> OpenAITier:
        return cls(options, api_key=bearer_token(options.api_key_env, api_key, f"openai tier {options.base_url}"),
                   client=client)

    def close(self) -> None:
        if self._own:
            self.client.close()

    def _ask(self, text: str) -> TierAnswer:
        import httpx

        body: dict[str, Any] = {"model": self.options.model, "temperature": 0, "max_tokens": self.options.max_tokens,
                                "messages": [{"role": "system", "content": self.system},
                                             {"role": "user", "content": text}]}
        if self.options.logprobs:
            body["logprobs"] = True
        try:
            reply = self.client.post(self.endpoint, json=body, headers=self._headers)
            if reply.status_code != 200:
                raise ValueError(f"HTTP {reply.status_code}: {reply.text[:200]}")
            choice = reply.json()["choices"][0]
            content = choice["message"]["content"]
            if not isinstance(content, str):
                raise ValueError(f"the reply's content is not text: {str(content)[:200]}")
        except (httpx.HTTPError, ValueError, KeyError, IndexError, TypeError) as exc:  # the endpoint failed
            log.warning("openai tier %s: %s: %s", self.endpoint, type(exc).__name__, exc)
            return TierAnswer(None, 0.0, "error", None, {"error": f"{type(exc).__name__}: {exc}"})
        label = parse_label(content, self.options.labels)
        if label is None:
            return TierAnswer(None, 0.0, "unparsed", None, {"reply": content[:500]})
        tokens = ((choice.get("logprobs") or {}).get("content") or []) if isinstance(choice, dict) else []
        logps = [t.get("logprob") for t in tokens if isinstance(t, dict)]
        if logps and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in logps):
            confidence = math.exp(sum(float(v) for v in logps if v is not None))
            return TierAnswer(label, min(1.0, confidence), ANSWERED, None, {"reply": content[:500]})
        return TierAnswer(label, 1.0, ANSWERED, None, {"reply": content[:500], "confidence": "not reported"})

    def answer(self, inputs: Any, previous: Sequence[TierAnswer | None]) -> list[TierAnswer]:
        return [self._ask(as_text(inputs[i])) for i in range(len(previous))]
