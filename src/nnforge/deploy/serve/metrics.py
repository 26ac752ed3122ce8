"""``/metrics`` in the Prometheus text format (prometheus_client), one registry per server."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["Metrics"]


class Metrics:
    """Requests by outcome, decisions by status, latency and batch-size histograms, queue depth, the halt state
    and the share of recent inputs the OOD guard flagged."""

    def __init__(self, queue_depth: Any = None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("nnforge_requests", "HTTP requests to /predict by outcome", ["outcome"], registry=r)
        self.decisions = Counter("nnforge_decisions", "Decisions per input by status", ["status"], registry=r)
        self.latency = Histogram("nnforge_request_seconds", "Time from queueing to decision per request",
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
                                 registry=r)
        self.model_time = Histogram("nnforge_batch_model_seconds", "Model (and guard) time per batch",
                                    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
                                    registry=r)
        self.batch = Histogram("nnforge_batch_inputs", "Inputs per model call",
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=r)
        self.halted = Gauge("nnforge_halted", "1 while an overseer has halted the server", registry=r)
        self.ood_share = Gauge("nnforge_recent_ood_share", "Share of recent inputs the OOD guard flagged",
                               registry=r)
        self.queue = Gauge("nnforge_queue_inputs", "Inputs waiting for the model", registry=r)
        if queue_depth is not None:
            self.queue.set_function(queue_depth)

    def observe_batch(self, n: int, model_s: float, statuses: Sequence[str], waits: Sequence[float]) -> None:
        self.batch.observe(n)
        self.model_time.observe(model_s)
        for s in statuses:
            self.decisions.labels(status=s).inc()
        for w in waits:
            self.latency.observe(w)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
