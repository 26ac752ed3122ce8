"""How ``nnforge serve`` answers: where it listens, how it batches, what it refuses and what it routes to a person."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from nnforge.config import Config, config_type

__all__ = ["ServeConfig"]


@config_type("deploy.serve")
class ServeConfig(Config):
    """The inference server's settings (see :mod:`nnforge.deploy.serve`).

    Decisions for one input, in order: the OOD guard (``ood``), then the confidence threshold (``unsure``).
    ``review`` withholds the answer and queues the input for a person (the reply carries the review item id);
    ``flag`` answers, marks the answer and queues it so a reviewer can override it; ``answer`` (confidence only)
    and ``off`` (OOD only) ignore the check.
    """

    host: str = Field("127.0.0.1", description="address to bind; anything but loopback must be asked for")
    port: int = Field(8000, ge=0, le=65535, description="0 picks a free port")
    max_batch: int = Field(32, ge=1, le=1024, description="inputs one model call may take (dynamic batching)")
    max_wait_ms: float = Field(2.0, ge=0, le=1000, description="how long the first queued input waits for company")
    max_inputs: int = Field(64, ge=1, le=4096, description="inputs one request may carry")
    max_text_chars: int = Field(4000, ge=1, le=1_000_000, description="characters one text input may have")
    max_body_bytes: int = Field(1_000_000, ge=1024, le=100_000_000, description="request body size limit")
    queue_limit: int = Field(4096, ge=1, description="inputs waiting for the model; beyond it a request gets 429")
    min_confidence: float = Field(0.5, ge=0, le=1, description="below it an answer is unsure")
    unsure: Literal["review", "flag", "answer"] = Field("flag", description="what an unsure answer becomes")
    ood: Literal["review", "flag", "off"] = Field("review", description="what an out-of-range input becomes")
    record_inputs: bool = Field(False, description="store raw inputs in the ledger (the recipe must allow it); "
                                                   "otherwise only their sha256")
    request_timeout_s: float = Field(30.0, gt=0, le=3600, description="a request waiting longer gets 503")
    recent: int = Field(1000, ge=1, le=1_000_000, description="inputs the /metrics OOD share looks back over")
