"""The server's engine, without HTTP: dynamic batching, the guard and confidence decisions, halt, the ledger.

One worker thread owns the model: it takes the first waiting request, gathers more until ``max_batch`` inputs
or ``max_wait_ms`` have passed and runs the backend once. A second thread owns the record: it decides each input
of a computed batch (answered, flagged, sent to review), records the batch's decisions in the ledger as one
``serve.decisions`` event and only then hands the answers back — while the model already runs the next batch
(a ledger commit is a synced write of a few milliseconds: the model no longer waits for it). An answer no ledger
event holds is never sent, and an answer decided after a halt is never sent: halting and deciding take the same
lock, and the ledger shows the order. Batches are recorded in the order they were computed.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from nnforge.deploy.serve.backends import Backend
from nnforge.deploy.serve.config import ServeConfig
from nnforge.errors import NnforgeError

__all__ = ["Service", "Halted", "Busy", "Decision"]

log = logging.getLogger(__name__)


class Halted(NnforgeError):
    """The server is halted by an overseer: it answers nothing until resumed."""


class Busy(NnforgeError):
    """More inputs wait than ``queue_limit`` allows."""


def input_sha256(x: Any) -> str:
    """sha256 of a text's UTF-8 bytes, or of a vector's float32 bytes (what the ledger records for an input)."""
    if isinstance(x, str):
        return hashlib.sha256(x.encode("utf-8")).hexdigest()
    return hashlib.sha256(torch.as_tensor(x, dtype=torch.float32).numpy().tobytes()).hexdigest()


@dataclass
class Decision:
    """What the server decided for one input."""

    status: str  # answered | flagged | review
    label: str | None
    confidence: float
    probabilities: dict[str, float] | None
    reasons: list[str]
    ood_score: float | None = None
    review_item: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "label": self.label, "confidence": self.confidence,
                "probabilities": self.probabilities, "reasons": self.reasons, "ood_score": self.ood_score,
                "review_item": self.review_item}


@dataclass
class _Request:
    inputs: list[Any]
    caller: str
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[Decision]]
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    queued: float = field(default_factory=time.perf_counter)


@dataclass
class _Computed:
    """A batch the model has run, on its way to the record thread."""

    batch: list[_Request]
    inputs: list[Any]
    probs: torch.Tensor
    ood: Any
    model_s: float


class Service:
    """The model, its guard and its record, behind a dynamic batcher.

    Args:
        backend: runs the model (see :mod:`nnforge.deploy.serve.backends`).
        labels: class names, in logit order.
        config: batching, limits and decision settings.
        ledger: the ledger location every decision, halt and resume is recorded in.
        run: the run id the events belong to; ``variant`` the served variant.
        guard: an :class:`nnforge.explain.OODGuard` (its ``check`` reads the backend's features), or ``None``.
        metrics: a :class:`nnforge.deploy.serve.metrics.Metrics` (or ``None``).
    """

    def __init__(self, backend: Backend, labels: Sequence[str], config: ServeConfig, *, ledger: str, run: str,
                 variant: str | None = None, guard: Any = None, metrics: Any = None,
                 facts: dict[str, Any] | None = None) -> None:
        self.backend, self.labels, self.config = backend, list(labels), config
        self.ledger_location, self.run, self.variant = ledger, run, variant
        self.guard, self.metrics = (guard if config.ood != "off" else None), metrics
        self.facts = dict(facts or {})
        self.operator: str | None = None  # who started the server (recorded on start and stop)
        # (inputs, method) -> one JSON-ready explanation per input, computed with the run's PyTorch model
        self.explainer: Callable[[list[Any], str], list[dict[str, Any]]] | None = None
        self._explaining = threading.Lock()
        self._cond = threading.Condition()
        self._queue: collections.deque[_Request] = collections.deque()
        self._waiting = 0  # inputs queued
        self._state = threading.Lock()  # halting and deciding exclude each other
        self.halted: dict[str, Any] | None = None
        self._stop = False
        self._thread: threading.Thread | None = None
        self._recorder: threading.Thread | None = None
        # computed batches waiting for their record: at most two, so a slow disk slows the model instead of
        # piling up answers
        self._computed: queue.Queue[_Computed | None] = queue.Queue(maxsize=2)
        self._ledger: Any = None
        self._queue_db: Any = None
        self.recent_ood: collections.deque[bool] = collections.deque(maxlen=config.recent)
        self.counts = collections.Counter[str]()

    # --- lifecycle --------------------------------------------------------------------------------------

    def start(self) -> None:
        from nnforge.ledger import Ledger

        with Ledger.open(self.ledger_location, actor=self.operator) as led:
            led.append("serve.started", {"variant": self.variant, "backend": self.backend.name,
                                         "config": self.config.model_dump(), **self.facts}, run=self.run)
        self._stop = False
        self._computed = queue.Queue(maxsize=2)
        self._recorder = threading.Thread(target=self._record_loop, name="nnforge-serve-record", daemon=True)
        self._thread = threading.Thread(target=self._work, name="nnforge-serve-model", daemon=True)
        self._recorder.start()
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._recorder is not None:  # the model thread's last act is telling it to finish
            self._recorder.join(timeout=30)
        from nnforge.ledger import Ledger

        with Ledger.open(self.ledger_location, actor=self.operator) as led:
            led.append("serve.stopped", {"answered": self.counts["answered"], "flagged": self.counts["flagged"],
                                         "review": self.counts["review"], "refused": self.counts["refused"]},
                       run=self.run)

    # --- oversight --------------------------------------------------------------------------------------

    def halt(self, user: Any, reason: str) -> dict[str, Any]:
        """Stop answering (Art. 14(4)(e)): from the moment this returns no prediction is answered until
        :meth:`resume`. Recorded as ``serve.halted`` with the user."""
        from nnforge.ledger import Ledger

        with self._state:
            with Ledger.open(self.ledger_location, actor=user.name) as led:
                e = led.append("serve.halted", {"user": user.record(), "reason": reason}, run=self.run)
            self.halted = {"by": user.name, "at": e.time, "reason": reason, "event": e.seq}
        if self.metrics is not None:
            self.metrics.halted.set(1)
        log.warning("halted by %s: %s", user.name, reason)
        return dict(self.halted)

    def resume(self, user: Any, reason: str) -> dict[str, Any]:
        from nnforge.ledger import Ledger

        with self._state:
            was = self.halted
            with Ledger.open(self.ledger_location, actor=user.name) as led:
                e = led.append("serve.resumed", {"user": user.record(), "reason": reason,
                                                 "halted_event": was["event"] if was else None}, run=self.run)
            self.halted = None
        if self.metrics is not None:
            self.metrics.halted.set(0)
        return {"resumed_by": user.name, "at": e.time, "was_halted": was is not None}

    def explain(self, inputs: list[Any], method: str, user: Any) -> list[dict[str, Any]]:
        """Explain the model's answers to ``inputs`` (already validated) with ``method``; one explanation runs at
        a time (it costs many forward passes: another request gets :class:`Busy`). Each is recorded as a
        ``model.explained`` event with the caller, the input's sha256, the answer and its strongest units."""
        from nnforge.errors import ConfigError
        from nnforge.ledger import Ledger

        if self.halted:
            raise Halted(f"halted by {self.halted['by']}: {self.halted['reason']}")
        if self.explainer is None:
            raise ConfigError("this server has no PyTorch model to explain with")
        if not self._explaining.acquire(blocking=False):
            raise Busy("an explanation is being computed; try again in a moment")
        try:
            out = self.explainer(inputs, method)
        finally:
            self._explaining.release()
        events = [("model.explained", {"kind": "feature-attribution", "source": "serve", "run": self.run,
                                       "variant": self.variant, "user": user.record(), "method": method,
                                       "input": {"source": "request", "sha256": input_sha256(x)},
                                       "target_label": e.get("target_label"),
                                       "completeness_error": (e.get("extras") or {}).get("completeness_error"),
                                       "top_positive": e.get("top_positive"), "top_negative": e.get("top_negative")},
                   self.run, user.name) for x, e in zip(inputs, out, strict=True)]
        with Ledger.open(self.ledger_location, actor=user.name) as led:
            led.append_many(events)
        return out

    # --- requests ---------------------------------------------------------------------------------------

    async def predict(self, inputs: list[Any], caller: str) -> tuple[str, list[Decision]]:
        """Queue ``inputs`` (already validated) and wait for their decisions; returns the request id the ledger
        records them under, and the decisions.

        Raises:
            Halted: the server is halted (checked now and again when the batch is decided).
            Busy: the queue is full.
            TimeoutError: no decision within ``request_timeout_s``.
        """
        if self.halted is not None:
            raise Halted(self._halted_text())
        loop = asyncio.get_running_loop()
        req = _Request(list(inputs), caller, loop, loop.create_future())
        with self._cond:
            if self._waiting + len(inputs) > self.config.queue_limit:
                raise Busy(f"{self._waiting} inputs are waiting (queue_limit {self.config.queue_limit}); retry later")
            self._queue.append(req)
            self._waiting += len(inputs)
            self._cond.notify()
        return req.id, await asyncio.wait_for(req.future, self.config.request_timeout_s)

    def _halted_text(self) -> str:
        h = self.halted or {}
        return f"halted by {h.get('by')} at {h.get('at')}: {h.get('reason') or 'no reason given'}"

    def _take(self) -> list[_Request] | None:
        """Wait for the first request, then gather more until max_batch inputs or max_wait_ms."""
        cfg = self.config
        with self._cond:
            while not self._queue and not self._stop:
                self._cond.wait(0.5)
            if self._stop:
                return None
            batch = [self._queue.popleft()]
            n = len(batch[0].inputs)
            deadline = time.perf_counter() + cfg.max_wait_ms / 1000
            while n < cfg.max_batch:
                if self._queue:
                    if n + len(self._queue[0].inputs) > cfg.max_batch:
                        break
                    r = self._queue.popleft()
                    batch.append(r)
                    n += len(r.inputs)
                    continue
                left = deadline - time.perf_counter()
                if left <= 0:
                    break
                self._cond.wait(left)
            self._waiting -= n
        return batch

    def _work(self) -> None:
        """The model thread: batches in, computed batches out to the record thread."""
        try:
            while (batch := self._take()) is not None:
                try:
                    computed = self._compute(batch)
                except Exception as exc:  # noqa: BLE001 - every waiting caller gets the error, the worker goes on
                    log.exception("batch failed")
                    for r in batch:
                        r.loop.call_soon_threadsafe(_fail, r.future, exc)
                    continue
                if computed is not None:
                    self._computed.put(computed)
        finally:
            self._computed.put(None)

    def _record_loop(self) -> None:
        """The record thread: owns the ledger and review-queue connections; decides, records, then answers."""
        from nnforge.govern.review import ReviewQueue
        from nnforge.ledger import Ledger

        self._ledger = Ledger.open(self.ledger_location, actor="nnforge-serve")
        self._queue_db = ReviewQueue(self._ledger)
        try:
            while (item := self._computed.get()) is not None:
                try:
                    self._finish(item)
                except Exception as exc:  # noqa: BLE001 - as in _work
                    log.exception("recording a batch failed")
                    for r in item.batch:
                        r.loop.call_soon_threadsafe(_fail, r.future, exc)
        finally:
            self._queue_db.close()

    def _compute(self, batch: list[_Request]) -> _Computed | None:
        t0 = time.perf_counter()
        inputs = [x for r in batch for x in r.inputs]
        if self.halted is not None:
            self._refuse(batch)
            return None
        out = self.backend(inputs)
        probs = torch.softmax(out.logits.float(), dim=-1)
        ood = self.guard.check(**out.features) if self.guard is not None else None
        return _Computed(batch, inputs, probs, ood, time.perf_counter() - t0)

    def _finish(self, c: _Computed) -> None:
        batch, inputs = c.batch, c.inputs
        with self._state:
            if self.halted is not None:  # halted while the model ran
                self._refuse(batch)
                return
            decisions, routed = self._decide(inputs, c.probs, c.ood)
            self._record(batch, inputs, decisions, routed)
            self.counts.update(d.status for d in decisions)
        i = 0
        for r in batch:
            mine = decisions[i : i + len(r.inputs)]
            i += len(r.inputs)
            r.loop.call_soon_threadsafe(_settle, r.future, mine)
        if self.metrics is not None:
            self.metrics.observe_batch(len(inputs), c.model_s, [d.status for d in decisions],
                                       [time.perf_counter() - r.queued for r in batch])
            self.metrics.ood_share.set(sum(self.recent_ood) / max(1, len(self.recent_ood)))

    def _refuse(self, batch: list[_Request]) -> None:
        text = self._halted_text()
        self.counts["refused"] += sum(len(r.inputs) for r in batch)
        for r in batch:
            r.loop.call_soon_threadsafe(_fail, r.future, Halted(text))

    def _decide(self, inputs: list[Any], probs: torch.Tensor, ood: Any) -> tuple[list[Decision], list[int]]:
        """Each input's decision, and which of them go to a person (routed or flagged)."""
        cfg = self.config
        conf, idx = probs.max(dim=-1)
        out, routed = [], []
        for j in range(len(inputs)):
            c, label = float(conf[j]), self.labels[int(idx[j])]
            reasons = []
            is_ood = bool(ood.is_ood[j]) if ood is not None else False
            if ood is not None:
                self.recent_ood.append(is_ood)
            if is_ood:
                reasons.append("ood")
            if c < cfg.min_confidence and cfg.unsure != "answer":
                reasons.append("low_confidence")
            review = (is_ood and cfg.ood == "review") or ("low_confidence" in reasons and cfg.unsure == "review")
            status = "review" if review else ("flagged" if reasons else "answered")
            out.append(Decision(status, label, c,
                                {n: float(p) for n, p in zip(self.labels, probs[j].tolist(), strict=True)},
                                reasons, float(ood.scores[j]) if ood is not None else None))
            if reasons:  # a person sees it: they decide a withheld one, may override a flagged one
                routed.append(j)
        return out, routed

    def _record(self, batch: list[_Request], inputs: list[Any], decisions: list[Decision], routed: list[int]) -> None:
        """Queue the routed inputs and record the batch: the queue's rows in one transaction, their
        ``review.enqueued`` events and the batch's ``serve.decisions`` in one ledger transaction."""

        def rows() -> list[dict[str, Any]]:
            out, i = [], 0
            for r in batch:
                for x in r.inputs:
                    d = decisions[i]
                    row: dict[str, Any] = {"request": r.id, "caller": r.caller, "input_sha256": input_sha256(x),
                                           "status": d.status, "label": d.label,
                                           "confidence": round(d.confidence, 6), "reasons": d.reasons}
                    if d.ood_score is not None:
                        row["ood_score"] = round(d.ood_score, 6)
                    if d.review_item is not None:
                        row["review_item"] = d.review_item
                    if self.config.record_inputs:
                        row["input"] = x
                    out.append(row)
                    i += 1
            return out

        def event(items: list[Any]) -> list[tuple[str, dict[str, Any], str | None, str | None]]:
            for j, item in zip(routed, items, strict=True):
                decisions[j].review_item = item.id
            return [("serve.decisions", {"variant": self.variant, "backend": self.backend.name,
                                         "decisions": rows()}, self.run, None)]

        if not routed:
            self._ledger.append_many(event([]))
        else:
            self._queue_db.enqueue_many(
                [{"run": self.run, "variant": self.variant, "label": decisions[j].label,
                  "confidence": decisions[j].confidence, "reason": decisions[j].reasons[0],
                  "text": inputs[j] if isinstance(inputs[j], str) else repr(list(inputs[j]))} for j in routed],
                also=event)
        for j in routed:
            if decisions[j].status == "review":
                decisions[j].label, decisions[j].probabilities = None, None  # withheld until a person decides

    def queue_depth(self) -> int:
        return self._waiting


def _settle(fut: asyncio.Future[list[Decision]], value: list[Decision]) -> None:
    if not fut.done():
        fut.set_result(value)


def _fail(fut: asyncio.Future[list[Decision]], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
