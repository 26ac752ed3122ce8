"""Metrics, each registered by name: ``METRICS.get("accuracy")(y_true, y_pred)``.

Inputs are 1-D integer tensors or sequences; results are floats (fractions in [0, 1] for rates).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from nnforge.registry import Registry

__all__ = ["METRICS", "accuracy", "macro_f1", "majority_accuracy", "cosine_fidelity"]

Labels = torch.Tensor | Sequence[int]
METRICS: Registry[Callable[..., float]] = Registry("metric")


def _t(x: Labels) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(list(x), dtype=torch.long)


@METRICS.register("accuracy")
def accuracy(y_true: Labels, y_pred: Labels) -> float:
    t, p = _t(y_true), _t(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {tuple(t.shape)} but y_pred has {tuple(p.shape)}")
    return float((t == p).float().mean()) if len(t) else float("nan")


@METRICS.register("macro_f1")
def macro_f1(y_true: Labels, y_pred: Labels, num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes present in either argument (or ``num_classes``)."""
    t, p = _t(y_true), _t(y_pred)
    classes = range(num_classes) if num_classes else sorted(set(t.tolist()) | set(p.tolist()))
    f1s = []
    for c in classes:
        tp = int(((p == c) & (t == c)).sum())
        fp = int(((p == c) & (t != c)).sum())
        fn = int(((p != c) & (t == c)).sum())
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    return sum(f1s) / len(f1s) if f1s else float("nan")


@METRICS.register("majority_accuracy")
def majority_accuracy(y_train: Labels, y_true: Labels) -> float:
    """Accuracy of always predicting the most frequent training label."""
    train, t = _t(y_train), _t(y_true)
    majority = int(torch.bincount(train).argmax())
    return float((t == majority).float().mean())


@METRICS.register("cosine_fidelity")
def cosine_fidelity(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean cosine similarity between matching rows of two embedding matrices (N, D)."""
    if reference.shape != other.shape:
        raise ValueError(f"embedding shapes differ: {tuple(reference.shape)} vs {tuple(other.shape)}")
    return float(torch.nn.functional.cosine_similarity(reference.float(), other.float(), dim=-1).mean())
