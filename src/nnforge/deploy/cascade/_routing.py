"""The two routing decisions, shared by the cascade and by the threshold search (so that the thresholds chosen
on validation data route exactly as the cascade will):

- :func:`stands` — which answers of a tier stand (status ``answered`` and confidence at least the threshold);
- :func:`admit` — which of the inputs passed up may reach a capped tier (the most uncertain first).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["stands", "admit", "allowance"]


def stands(answered: np.ndarray, confidence: np.ndarray, min_confidence: float) -> np.ndarray:
    """Boolean mask: the answers that stand. ``answered``: status is ``"answered"``; ``confidence``: (N,)."""
    return answered & (confidence >= min_confidence)


def allowance(max_share: float | None, requests_seen: int, reached_before: int) -> int | None:
    """How many more inputs a tier capped at ``max_share`` may take once ``requests_seen`` requests have come
    (this batch included) and ``reached_before`` of the earlier ones reached it; None: no cap."""
    if max_share is None:
        return None
    # the small epsilon keeps 0.1 * 360 (36.00000000000001 in floating point) at 36, and 0.3 * 10 at 3
    return max(0, math.floor(max_share * requests_seen + 1e-9) - reached_before)


def admit(candidates: np.ndarray, answered: np.ndarray, confidence: np.ndarray,
          allowed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Split the inputs passed up to a tier into those that reach it and those held back by its cap.

    Args:
        candidates: (M,) indices of the inputs passed up, in request order.
        answered, confidence: (M,) the lower tier's status (``answered`` or not) and confidence for them.
        allowed: how many may reach the tier (:func:`allowance`); None: all.

    Returns:
        ``(admitted, held)`` index arrays, each in request order. When the cap binds, the most uncertain are
        admitted: answers that were not ``answered`` (flagged, errors) first, then the least confident; ties in
        request order.
    """
    if allowed is None or allowed >= len(candidates):
        return candidates, candidates[:0]
    order = np.lexsort((np.arange(len(candidates)), confidence, answered))  # last key sorts first: False < True
    chosen = np.zeros(len(candidates), dtype=bool)
    chosen[order[:allowed]] = True
    return candidates[chosen], candidates[~chosen]
