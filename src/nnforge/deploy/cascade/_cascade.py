"""Running a cascade: each input goes to the cheapest tier; an answer that does not stand goes up to the next.

Per run the cascade returns, per input, the tier whose answer stands, its label, confidence and status, and
every tier's answer on the way; per tier, the share of inputs it answered, the accuracy of what it answered
(given the true labels), and its measured cost: the median wall-clock of a call and the milliseconds per input
(a call's time over the inputs it took; both measured around the tier's ``answer``, so for a remote tier they
include the network).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np

from nnforge.deploy.cascade._config import CascadeConfig
from nnforge.deploy.cascade._routing import admit, allowance, stands
from nnforge.deploy.cascade._tier import ANSWERED, TIER_KINDS, Tier, TierAnswer
from nnforge.errors import ConfigError, DataError, ModelError

__all__ = ["Cascade", "CascadeAnswer", "CascadeResult", "Step", "TierReport"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Step:
    """One tier's answer on an input's way up."""

    tier: str
    label: str | None
    confidence: float
    status: str


@dataclass(frozen=True)
class CascadeAnswer:
    """The answer that stands for one input.

    Args:
        tier: the tier whose answer stands.
        label, confidence, status, detail: that answer's.
        path: every tier asked, in order, with its answer.
        held_by: the tier whose cap (``max_share``) kept the input from reaching it, if one did.
        correct: whether ``label`` is the true label (None when no truth was given, or while it is pending).
    """

    tier: str
    label: str | None
    confidence: float
    status: str
    path: tuple[Step, ...]
    held_by: str | None = None
    correct: bool | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"tier": self.tier, "label": self.label, "confidence": self.confidence, "status": self.status,
                "path": [vars(s) for s in self.path], "held_by": self.held_by, "correct": self.correct,
                "detail": self.detail}


@dataclass(frozen=True)
class TierReport:
    """What one tier did in a run.

    ``share``: inputs it answered (its answer stands) over all inputs; ``reached_share``: inputs it was asked
    about over all inputs (its cost); ``accuracy``: correct over its standing answers (pending ones left out;
    None without truth); ``statuses``: the statuses of every answer it gave; ``held``: inputs its cap kept from
    it; ``latency_ms``: median wall-clock of one call of the tier (one call per run, per batch of inputs);
    ``ms_per_input``: the calls' total time over the inputs they took (the cost figure: measured, not
    estimated).
    """

    name: str
    kind: str
    min_confidence: float
    max_share: float | None
    requests: int
    reached: int
    answered: int
    share: float
    reached_share: float
    accuracy: float | None
    statuses: dict[str, int]
    held: int
    calls: int
    latency_ms: float | None
    ms_per_input: float | None
    call_ms: list[float] = field(repr=False)

    def to_dict(self, samples: bool = False) -> dict[str, Any]:
        out = dict(vars(self))
        if not samples:
            out.pop("call_ms")
        return out


def _accuracy(answers: Iterable[CascadeAnswer]) -> float | None:
    judged = [a.correct for a in answers if a.correct is not None]
    return sum(judged) / len(judged) if judged else None


@dataclass(frozen=True)
class CascadeResult:
    """The answers of one run (or of several, :meth:`combine`) and the per-tier reports made from them."""

    config: CascadeConfig
    answers: list[CascadeAnswer]
    call_ms: dict[str, list[float]]

    @property
    def labels(self) -> list[str | None]:
        return [a.label for a in self.answers]

    @property
    def accuracy(self) -> float | None:
        """Correct over all inputs whose answer is not pending (errors count as wrong); None without truth."""
        return _accuracy(self.answers)

    @property
    def tiers(self) -> list[TierReport]:
        n = len(self.answers)
        out = []
        for t in self.config.tiers:
            mine = [a for a in self.answers if a.tier == t.name]
            steps = [s for a in self.answers for s in a.path if s.tier == t.name]
            statuses: dict[str, int] = {}
            for s in steps:
                statuses[s.status] = statuses.get(s.status, 0) + 1
            ms = self.call_ms.get(t.name, [])
            out.append(TierReport(
                name=t.name, kind=t.kind, min_confidence=t.min_confidence, max_share=t.max_share, requests=n,
                reached=len(steps), answered=len(mine), share=len(mine) / n if n else 0.0,
                reached_share=len(steps) / n if n else 0.0, accuracy=_accuracy(mine), statuses=statuses,
                held=sum(a.held_by == t.name for a in self.answers), calls=len(ms),
                latency_ms=statistics.median(ms) if ms else None,
                ms_per_input=sum(ms) / len(steps) if steps else None, call_ms=list(ms)))
        return out

    def tier(self, name: str) -> TierReport:
        """The report of the tier called ``name``."""
        for report in self.tiers:
            if report.name == name:
                return report
        raise ConfigError(f"cascade result: no tier called {name!r}; tiers: {self.config.names}")

    @classmethod
    def combine(cls, results: Sequence[CascadeResult]) -> CascadeResult:
        """One result of several runs of the same cascade (e.g. one request at a time): answers in order, calls
        pooled, so latencies are medians over every call."""
        if not results:
            raise ConfigError("CascadeResult.combine needs at least one result")
        return cls(results[0].config, [a for r in results for a in r.answers],
                   {name: [ms for r in results for ms in r.call_ms.get(name, [])] for name in results[0].config.names})

    def to_dict(self, answers: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {"requests": len(self.answers), "accuracy": self.accuracy,
                               "tiers": [r.to_dict() for r in self.tiers]}
        if answers:
            out["answers"] = [a.to_dict() for a in self.answers]
        return out


def _take(inputs: Any, index: np.ndarray) -> Any:
    """The inputs at ``index``: a list of them, or the rows of an array or tensor."""
    if isinstance(inputs, (list, tuple)):
        return [inputs[i] for i in index]
    return inputs[index]


class Cascade:
    """A cascade of tiers built from a :class:`CascadeConfig`.

    Args:
        config: the tiers, in order, with their thresholds and caps.
        objects: tier name -> what that tier's kind needs besides its options (a ``local`` tier's ``predict``
            function, a ``human`` tier's ``queue`` or ``oracle``); passed to the kind's ``from_options``.

    Caps (``max_share``) count over every request the cascade has served since it was made (or
    :meth:`reset`): a run of one request at a time and a run of the same requests in one batch reach the same
    tiers, except that a capped tier's allowance grows as requests come (with a 10% cap, the tenth request is
    the first that may reach it). Not thread-safe: serve one run at a time.
    """

    def __init__(self, config: CascadeConfig, objects: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        objects = dict(objects or {})
        unknown = sorted(set(objects) - set(config.names))
        if unknown:
            raise ConfigError(f"cascade objects: no tier called {unknown}; tiers: {config.names}")
        self.config = config
        self.tiers: list[Tier] = []
        for t in config.tiers:
            kind = TIER_KINDS.get(t.kind, where=f"tier {t.name!r}: kind")
            try:
                tier = kind.from_options(t.options_config(), **dict(objects.get(t.name, {})))
            except TypeError as exc:  # a missing or unknown object: say which tier wants what
                raise ConfigError(f"tier {t.name!r} (kind {t.kind!r}): {exc}") from None
            self.tiers.append(tier)
        self.reset()

    def reset(self) -> None:
        """Forget the requests served so far (the caps start again)."""
        self.requests_seen = 0
        self._reached = [0] * len(self.tiers)

    def close(self) -> None:
        """Close the tiers that hold connections."""
        for tier in self.tiers:
            close = getattr(tier, "close", None)
            if callable(close):
                close()

    def __enter__(self) -> Cascade:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, k: int, inputs: Any, previous: Sequence[TierAnswer | None]) -> tuple[list[TierAnswer], float]:
        t0 = time.perf_counter()
        answers = self.tiers[k].answer(inputs, previous)
        ms = (time.perf_counter() - t0) * 1e3
        if len(answers) != len(previous):
            raise ModelError(f"tier {self.config.tiers[k].name!r} gave {len(answers)} answers for "
                             f"{len(previous)} inputs")
        return answers, ms

    def run(self, inputs: Any, truth: Sequence[Any] | None = None) -> CascadeResult:
        """Answer ``inputs`` (a list, or an array or tensor of rows), each by the cheapest tier whose answer
        stands; ``truth`` (labels, compared as strings) adds accuracies to the result."""
        n = len(inputs)
        if truth is not None and len(truth) != n:
            raise DataError(f"cascade: {len(truth)} true labels for {n} inputs")
        self.requests_seen += n
        last = len(self.tiers) - 1
        previous: list[TierAnswer | None] = [None] * n
        paths: list[list[Step]] = [[] for _ in range(n)]
        final: list[tuple[int, str | None] | None] = [None] * n  # (tier index, the tier whose cap held it)
        call_ms: dict[str, list[float]] = {name: [] for name in self.config.names}
        pending = np.arange(n)
        for k, tc in enumerate(self.config.tiers):
            if k > 0 and len(pending):
                answered = np.array([previous[i].status == ANSWERED for i in pending])  # type: ignore[union-attr]
                confidence = np.array([previous[i].confidence for i in pending])  # type: ignore[union-attr]
                pending, held = admit(pending, answered, confidence,
                                      allowance(tc.max_share, self.requests_seen, self._reached[k]))
                for i in held:
                    final[i] = (k - 1, tc.name)
            if not len(pending):
                break
            self._reached[k] += len(pending)
            answers, ms = self._call(k, _take(inputs, pending), [previous[i] for i in pending])
            call_ms[tc.name].append(ms)
            for i, a in zip(pending, answers, strict=True):
                previous[i] = a
                paths[i].append(Step(tc.name, a.label, float(a.confidence), a.status))
            ok = np.ones(len(pending), dtype=bool) if k == last else stands(
                np.array([a.status == ANSWERED for a in answers]), np.array([a.confidence for a in answers]),
                tc.min_confidence)
            for i in pending[ok]:
                final[i] = (k, None)
            pending = pending[~ok]
        out = []
        for i in range(n):
            k, held_by = cast(tuple[int, str | None], final[i])  # every input reached the first tier
            a = cast(TierAnswer, previous[i])
            correct = None if truth is None or a.status == "pending" else a.label == str(truth[i])
            out.append(CascadeAnswer(self.config.tiers[k].name, a.label, float(a.confidence), a.status,
                                     tuple(paths[i]), held_by, correct, a.detail))
        return CascadeResult(self.config, out, call_ms)

    def answer_all(self, inputs: Any, *, skip: Iterable[str] = ()) -> dict[str, list[TierAnswer]]:
        """Every tier's answers to every input (tiers named in ``skip`` left out — a human tier, whose answers
        on validation data are usually the true labels, :func:`oracle_answers`): what
        :func:`choose_thresholds` needs. Caps are not applied and nothing is counted."""
        skip = set(skip)
        unknown = sorted(skip - set(self.config.names))
        if unknown:
            raise ConfigError(f"answer_all: no tier called {unknown}; tiers: {self.config.names}")
        n = len(inputs)
        return {tc.name: self._call(k, inputs, [None] * n)[0] for k, tc in enumerate(self.config.tiers)
                if tc.name not in skip}
