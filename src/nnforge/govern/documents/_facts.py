"""Facts read from a run's files and ledger events, each citable by the event it came from."""


from __future__ import annotations

from typing import Any

from nnforge.govern.documents._model import Span, _num
from nnforge.ledger import Event


class _Facts:
    """Finds figures in a run's events and hands them out as cited spans; remembers what was cited."""

    def __init__(self, events: list[Event], config: dict[str, Any], sections: dict[str, Any]) -> None:
        self.events = events
        self.config = config
        self.sections = sections
        self.cited: dict[int, Event] = {}

    def first(self, kind: str, step: str | None = None) -> Event | None:
        for e in self.events:
            if e.kind == kind and (step is None or e.data.get("step") == step):
                return e
        return None

    def all(self, kind: str) -> list[Event]:
        return [e for e in self.events if e.kind == kind]

    def cite(self, event: Event, value: Any, pattern: str = "{:.3f}", derived: bool = False) -> Span:
        self.cited[event.seq] = event
        return Span(_num(value, pattern), seq=event.seq, hash=event.hash, derived=derived)

    def metric(self, key: str, pattern: str = "{:.3f}") -> Span | None:
        """A metric as the step that measured it recorded it (``step.finished``), cited."""
        for e in self.events:
            if e.kind == "step.finished" and key in e.data.get("metrics", {}):
                return self.cite(e, e.data["metrics"][key], pattern)
        return None

    def step_event(self, step: str) -> Event | None:
        return self.first("step.finished", step)

    def recipe(self) -> tuple[dict[str, Any], Event | None]:
        ev = self.first("run.started")
        if ev is not None and isinstance(ev.data.get("recipe"), dict):
            return ev.data["recipe"], ev
        return {}, None


def _text_fact(facts: _Facts, value: Any, event: Event | None) -> Span:
    if event is None:
        return Span(str(value))
    facts.cited[event.seq] = event
    return Span(str(value), seq=event.seq, hash=event.hash)


def _metadata(facts: _Facts) -> tuple[dict[str, Any], Event | None]:
    recipe, ev = facts.recipe()
    meta = recipe.get("metadata") if isinstance(recipe.get("metadata"), dict) else None
    return (meta or {}), ev


