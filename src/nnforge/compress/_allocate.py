"""The greedy budget allocator that mixed-precision quantization and non-uniform pruning share.

Each layer has measured options (a format, a sparsity level), each with an ``error`` and a cost (bytes, kept
weights, FLOPs, milliseconds). Every layer starts at its most expensive option of its Pareto frontier and the
step with the smallest error increase per unit of cost saved is taken until the total fits: the greedy
solution of the knapsack HAWQ-style allocators solve, with the measured error as the value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, TypeVar

__all__ = ["Option", "pareto_ladder", "greedy_allocate"]


class Option(Protocol):
    """What the allocator needs of an option: its measured error (smaller is better)."""

    @property
    def error(self) -> float: ...


T = TypeVar("T", bound=Option)


def pareto_ladder(options: Sequence[T], cost: Callable[[T], float]) -> list[T]:
    """The options no other beats on both cost and error, most expensive (most precise) first."""
    frontier: list[T] = []
    for o in sorted(options, key=lambda o: (cost(o), o.error)):
        if not frontier or o.error < frontier[-1].error:
            frontier.append(o)
    return frontier[::-1]


def greedy_allocate(options: Mapping[str, Sequence[T]], cost: Callable[[T], float], limit: float) -> dict[str, T] | None:
    """One option per layer with a total ``cost`` of at most ``limit`` and (greedily) the least total error.

    Returns ``None`` when even the cheapest options exceed ``limit`` (the caller names the budget).
    """
    ladders = {name: pareto_ladder(opts, cost) for name, opts in options.items()}
    pick = dict.fromkeys(ladders, 0)
    total = sum(cost(ladder[0]) for ladder in ladders.values())
    while total > limit:
        best, best_rate = None, float("inf")
        for n, i in pick.items():
            if i + 1 < len(ladders[n]):
                cur, nxt = ladders[n][i], ladders[n][i + 1]
                saved = cost(cur) - cost(nxt)
                rate = (nxt.error - cur.error) / max(saved, 1e-12)
                if saved > 0 and rate < best_rate:
                    best, best_rate = n, rate
        if best is None:
            return None
        total -= cost(ladders[best][pick[best]]) - cost(ladders[best][pick[best] + 1])
        pick[best] += 1
    return {n: ladders[n][i] for n, i in pick.items()}
