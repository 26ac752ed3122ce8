"""``human``: a person, the last tier.

In service, each input that reaches it is queued for review in the ledger's review queue
(:class:`nnforge.govern.ReviewQueue`) with the answer of the tier below as the proposed label and the reason
``ood`` (that tier flagged it) or ``low_confidence``; the answer has the status ``pending`` and
``detail["review_item"]`` is the item's id, which ``nnforge review`` shows and decides. In benchmarks an
``oracle`` (a function ``inputs -> labels``, e.g. the true labels) answers at once instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pydantic import Field

from nnforge.config import Config, config_type
from nnforge.deploy.cascade._tier import TierAnswer, as_text, register_tier
from nnforge.errors import ConfigError, ModelError

__all__ = ["HumanTier", "HumanTierOptions"]

@config_type("deploy.cascade.human")
class HumanTierOptions(Config):
    """Options of a ``human`` tier that queues for review (an oracle needs none)."""

    ledger: str | None = Field(None, description="the ledger whose review queue to use (a SQLite path or a "
                                                 "PostgreSQL URL); default .nnforge/ledger.db, or pass queue=")
    run: str | None = Field(None, min_length=1, description="the run id the review items belong to")
    variant: str | None = Field(None, description="the variant the proposed labels come from, for the reviewer")

@register_tier("human")
class HumanTier:
    """A person: a review queue (``queue`` and ``run``), or an ``oracle`` that answers at once.

    Args:
        queue: an open :class:`~nnforge.govern.ReviewQueue` (the cascade does not close it).
        run: the run id the review items belong to.
        variant: recorded with each item.
        oracle: ``inputs -> labels`` instead of a queue (benchmarks; confidence 1).
    """

    Options = HumanTierOptions

    def __init__(self, *, queue: Any = None, run: str | None = None, variant: str | None = None,
                 oracle: Callable[[Any], Sequence[Any]] | None = None) -> None:
        if (queue is None) == (oracle is None):
            raise ConfigError("human tier: give either a review queue (queue=, or the 'ledger' option) or an oracle")
        if queue is not None and not run:
            raise ConfigError("human tier: review items need a run id (the 'run' option)")
        self.queue, self.run, self.variant, self.oracle = queue, run, variant, oracle
        self._own = False

    @classmethod
    def from_options(cls, options: HumanTierOptions, *, queue: Any = None,
                     oracle: Callable[[Any], Sequence[Any]] | None = None) -> HumanTier:
        own = queue is None and oracle is None
        if own:
            from nnforge.govern import ReviewQueue

            queue = ReviewQueue.open(options.ledger)
        tier = cls(queue=queue, run=options.run, variant=options.variant, oracle=oracle)
        tier._own = own
        return tier

    def close(self) -> None:
        if self._own:
            self.queue.close()

    def answer(self, inputs: Any, previous: Sequence[TierAnswer | None]) -> list[TierAnswer]:
        if self.oracle is not None:
            labels = list(self.oracle(inputs))
            if len(labels) != len(previous):
                raise ModelError(f"human tier: the oracle gave {len(labels)} labels for {len(previous)} inputs")
            return [TierAnswer(str(label), 1.0) for label in labels]
        out = []
        for i, below in enumerate(previous):
            proposed = below.label if below is not None and below.label is not None else "(none)"
            item = self.queue.enqueue(run=self.run, text=as_text(inputs[i]), label=proposed,
                                      confidence=below.confidence if below is not None else 0.0,
                                      reason="ood" if below is not None and below.status == "flagged"
                                      else "low_confidence", variant=self.variant)
            out.append(TierAnswer(None, 0.0, "pending", None, {"review_item": item.id, "proposed": proposed}))
        return out
