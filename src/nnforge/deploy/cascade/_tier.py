"""What a tier is: something that answers a batch of inputs, registered by the name a config gives as its kind.

A tier kind is a class with an ``Options`` config (what a cascade config may say about it) and a
``from_options(options, **objects)`` constructor (``objects``: what a config cannot hold — a model's
``predict`` function, an open review queue, an oracle). Registering one is decorating it with
``@register_tier("name")``; nothing else needs editing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

from nnforge.config import Config
from nnforge.errors import ConfigError
from nnforge.registry import Registry

__all__ = ["ANSWERED", "TierAnswer", "Tier", "TierKind", "TIER_KINDS", "register_tier", "oracle_answers",
           "as_text", "as_json"]

ANSWERED = "answered"
"""The one status whose answer may stand; anything else (``flagged``, ``review``, ``pending``, ``error``,
``unparsed``, …) passes the input up to the next tier."""


@dataclass(frozen=True)
class TierAnswer:
    """One tier's answer to one input.

    Args:
        label: the class it names (None when it has none: an error, a pending review).
        confidence: its probability for ``label``, in [0, 1] (0 when it has no label).
        status: ``"answered"`` or why the answer may not stand (see :data:`ANSWERED`).
        probabilities: label -> probability, where the tier gives them.
        detail: facts about the answer (an error message, a review item id, the raw reply).
    """

    label: str | None
    confidence: float
    status: str = ANSWERED
    probabilities: dict[str, float] | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "confidence": self.confidence, "status": self.status,
                "probabilities": self.probabilities, "detail": self.detail}


@runtime_checkable
class Tier(Protocol):
    """Answers inputs. Called by the cascade from one thread at a time.

    ``answer(inputs, previous)`` gets the inputs that reached this tier (a list, or rows of an array or tensor)
    and, for each, the answer of the tier below it (None at the first tier); it returns one
    :class:`TierAnswer` per input, in order. A tier that cannot answer an input says so in the status
    (``"error"``) instead of raising, so the cascade can pass the input up.
    """

    def answer(self, inputs: Any, previous: Sequence[TierAnswer | None]) -> list[TierAnswer]: ...


class TierKind(Protocol):
    """A registered tier class: its options config and the constructor a cascade config goes through."""

    Options: ClassVar[type[Config]]

    @classmethod
    def from_options(cls, options: Any, **objects: Any) -> Tier: ...


TIER_KINDS: Registry[type[TierKind]] = Registry("cascade tier kind")


def register_tier(name: str):  # type: ignore[no-untyped-def]
    """Class decorator: register a tier kind under ``name`` (``kind: name`` in a cascade config)."""

    def decorator(cls: type[Any]) -> type[Any]:
        if not (isinstance(getattr(cls, "Options", None), type) and issubclass(cls.Options, Config)):
            raise ConfigError(f"tier kind {name!r}: {cls.__name__} needs an 'Options' class (an nnforge Config)")
        if not callable(getattr(cls, "from_options", None)):
            raise ConfigError(f"tier kind {name!r}: {cls.__name__} needs a classmethod from_options(options, **objects)")
        TIER_KINDS.add(name, cls)
        return cls

    return decorator


def oracle_answers(labels: Sequence[str]) -> list[TierAnswer]:
    """The answers of a person who is always right (the true labels, confidence 1): what
    :func:`~nnforge.deploy.cascade.choose_thresholds` needs for a human tier when reviewers are assumed right."""
    return [TierAnswer(str(label), 1.0) for label in labels]


def as_json(value: Any) -> Any:
    """An input as plain JSON values (numpy arrays and tensors as nested lists)."""
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [as_json(v) for v in value]
    return value


def as_text(value: Any) -> str:
    """An input as text: a string as is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(as_json(value))
