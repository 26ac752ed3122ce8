"""Deletion curves (Petsiuk et al. 2018): is an attribution faithful to the model?

Remove the input's units in the attribution's order — most positive first — and follow the probability of
the class that was explained. A faithful attribution makes it fall fast, so the area under the curve (over
the removed fraction, 0 → 1) is small; a random order is the reference every attribution must beat.
Removal is a true deletion for text (the token's attention-mask entry is set to 0), the baseline value 0 for
pixels and features, a space for characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from nnforge.errors import DataError
from nnforge.explain.attribution._subject import Subject, subject_of

__all__ = ["DeletionCurve", "deletion_curve"]


@dataclass
class DeletionCurve:
    """``probabilities[i][j]``: example i's probability of its explained class after removing ``fractions[j]``
    of its units; ``aucs[i]`` the area under that curve; ``auc`` their mean."""

    order: str
    fractions: list[float]
    probabilities: list[list[float]]
    aucs: list[float]

    @property
    def auc(self) -> float:
        return float(np.mean(self.aucs)) if self.aucs else float("nan")

    @property
    def mean_curve(self) -> list[float]:
        return np.mean(np.asarray(self.probabilities), axis=0).tolist() if self.probabilities else []

    def to_dict(self) -> dict[str, Any]:
        return {"order": self.order, "fractions": self.fractions, "mean_curve": self.mean_curve, "auc": self.auc,
                "examples": len(self.aucs)}


def _removed(s: Subject, positions: list[int], counts: list[int]) -> tuple[torch.Tensor, tuple[Any, ...]]:
    """A batch holding the example once per count, with the first ``count`` of ``positions`` removed."""
    n = len(counts)
    if s.family == "text-classifier":
        (mask,) = s.extra
        masks = mask.expand(n, -1).clone()
        for row, c in enumerate(counts):
            masks[row, positions[:c]] = 0
        return s.inputs.expand(n, -1), (masks,)
    x = s.inputs.expand(n, *s.inputs.shape[1:]).clone()
    flat = x.reshape(n, -1)
    base = s.baselines.reshape(1, -1)
    for row, c in enumerate(counts):
        flat[row, positions[:c]] = base[0, positions[:c]]
    return flat.reshape(x.shape), ()


@torch.no_grad()
def deletion_curve(model: nn.Module, inputs: Any, attributions: Sequence[Any], *, order: str = "attribution",
                   steps: int = 10, seed: int = 0, repeats: int = 1, image_shape: tuple[int, int] | None = None,
                   vocab: str | None = None) -> DeletionCurve:
    """The deletion curve of each input, removing units in the order of its attribution's scores (``order=
    "attribution"``) or in a seeded random order (``"random"``, averaged over ``repeats`` permutations).

    ``attributions[i]`` is the :class:`~nnforge.explain.attribution.Attribution` of ``inputs[i]`` (its
    ``target`` is the class followed; its ``scores`` give the order). ``steps`` + 1 points from 0 to 1.
    """
    if order not in ("attribution", "random"):
        raise DataError(f"deletion_curve: order must be 'attribution' or 'random'; got {order!r}")
    if steps < 1 or repeats < 1:
        raise DataError("deletion_curve: steps and repeats must be at least 1")
    from nnforge.models.text import eval_mode

    with eval_mode(model):  # every module's own mode back afterwards
        subject = subject_of(model, inputs, vocab=vocab, image_shape=image_shape)
        if len(subject) != len(attributions):
            raise DataError(f"deletion_curve: {len(subject)} inputs but {len(attributions)} attributions")
        fractions = [j / steps for j in range(steps + 1)]
        gen = np.random.default_rng(seed)
        curves, aucs = [], []
        for i, a in enumerate(attributions):
            s = subject.one(i)
            real = [j for j, r in enumerate(s.real[0].tolist()) if r]
            if len(a.scores) != s.real.shape[1]:
                raise DataError(f"deletion_curve: attribution {i} has {len(a.scores)} units, its input "
                                f"{s.real.shape[1]}")
            counts = [round(f * len(real)) for f in fractions]
            orders = ([sorted(real, key=lambda j: -a.scores[j])] if order == "attribution"
                      else [list(gen.permutation(real)) for _ in range(repeats)])
            probs = np.zeros(len(fractions))
            for positions in orders:
                x, extra = _removed(s, [int(p) for p in positions], counts)
                probs += torch.softmax(s.forward(x, *extra).float(), -1)[:, a.target].numpy()
            probs /= len(orders)
            curves.append(probs.round(6).tolist())
            aucs.append(float(np.trapezoid(probs, fractions)))
        return DeletionCurve(order, fractions, curves, aucs)

