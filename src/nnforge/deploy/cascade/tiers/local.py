"""``local``: a model in this process — a function giving class probabilities, and optionally an OOD flag.

    LocalTier(predict=lambda x: model(x).softmax(-1), labels=["0", "1", ...], ood=lambda x: guard(x).flags)

``predict(inputs)`` returns an (N, C) array or tensor of probabilities over ``labels``; ``ood(inputs)`` an (N,)
array of booleans, True for an input the model should not answer (its answer then has status ``flagged`` and
goes up). Inputs are passed as the cascade got them (a list, or rows of an array or tensor).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydantic import Field

from nnforge.config import Config, config_type
from nnforge.deploy.cascade._tier import ANSWERED, TierAnswer, register_tier
from nnforge.errors import ConfigError, ModelError

__all__ = ["LocalTier", "LocalTierOptions"]


def _array(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().float().cpu().numpy()
    return np.asarray(value)


@config_type("deploy.cascade.local")
class LocalTierOptions(Config):
    """Options of a ``local`` tier (its ``predict`` and ``ood`` functions are objects, not options)."""

    labels: list[str] | None = Field(None, min_length=2, description="class names, in the order of predict's "
                                                                     "columns (or pass labels= as an object)")


@register_tier("local")
class LocalTier:
    """A model in this process.

    Args:
        predict: ``inputs -> (N, C)`` class probabilities (rows sum to 1).
        labels: the C class names.
        ood: ``inputs -> (N,)`` booleans, True for out-of-distribution inputs; None: no OOD check.
    """

    Options = LocalTierOptions

    def __init__(self, predict: Callable[[Any], Any], labels: Sequence[str], *,
                 ood: Callable[[Any], Any] | None = None) -> None:
        if not callable(predict):
            raise ConfigError(f"local tier: predict must be a function inputs -> probabilities; got {predict!r}")
        if ood is not None and not callable(ood):
            raise ConfigError(f"local tier: ood must be a function inputs -> flags, or None; got {ood!r}")
        if len(labels) < 2:
            raise ConfigError(f"local tier: labels must name at least two classes; got {list(labels)}")
        self.predict, self.labels, self.ood = predict, [str(x) for x in labels], ood

    @classmethod
    def from_options(cls, options: LocalTierOptions, *, predict: Callable[[Any], Any],
                     labels: Sequence[str] | None = None, ood: Callable[[Any], Any] | None = None) -> LocalTier:
        names = labels if labels is not None else options.labels
        if names is None:
            raise ConfigError("local tier: give its labels, in the options or as an object")
        return cls(predict, names, ood=ood)

    def answer(self, inputs: Any, previous: Sequence[TierAnswer | None]) -> list[TierAnswer]:
        n = len(previous)
        probs = _array(self.predict(inputs))
        if probs.shape != (n, len(self.labels)):
            raise ModelError(f"local tier: predict gave an array of shape {probs.shape} for {n} inputs; expected "
                             f"({n}, {len(self.labels)}) probabilities over {self.labels}")
        flags = np.zeros(n, dtype=bool) if self.ood is None else _array(self.ood(inputs)).astype(bool).reshape(-1)
        if flags.shape != (n,):
            raise ModelError(f"local tier: ood gave {flags.shape[0]} flags for {n} inputs")
        top = probs.argmax(axis=1)
        return [TierAnswer(self.labels[j], float(p[j]), "flagged" if flag else ANSWERED,
                           {name: float(v) for name, v in zip(self.labels, p, strict=True)})
                for p, j, flag in zip(probs, top, flags, strict=True)]
