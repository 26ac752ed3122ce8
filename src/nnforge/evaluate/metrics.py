"""Metrics. Plain functions (``accuracy(y_true, y_pred)``, …) and the registry :data:`METRICS` of
:class:`Metric` descriptors that regression suites, slice tables and reports use.

A registered metric computes one number from :class:`~nnforge.evaluate.outputs.Outputs` (and a reference
model's outputs when it compares two models), so any subset of examples — a slice, a bootstrap resample —
can be scored the same way. Scalar measurements that are not per-example (latency, size) are registered
too (``kind="measured"``); the suite runner supplies their values.

| name | what | better |
|---|---|---|
| accuracy, macro_f1 | share correct; unweighted mean per-class F1 | higher |
| auroc | ROC AUC (binary: class 1 score; multi-class: one-vs-rest macro) | higher |
| nll, perplexity | mean cross-entropy (the val loss), and its exp | lower |
| ece, brier | expected calibration error (15 equal-width bins), multi-class Brier score | lower |
| agreement, flip_rate | share of predictions equal to / different from the reference model's | higher / lower |
| cos_fidelity | mean cosine between the model's and the reference's embeddings | higher |
| latency_ms, size_mb | batch-1 median latency; bytes of the weights file / 10^6 | lower |
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from nnforge.errors import DataError
from nnforge.evaluate.calibration import brier_score, expected_calibration_error, negative_log_likelihood
from nnforge.evaluate.outputs import Outputs
from nnforge.registry import Registry

__all__ = ["METRICS", "Metric", "accuracy", "macro_f1", "majority_accuracy", "cosine_fidelity", "auroc", "metric"]

Labels = torch.Tensor | Sequence[int]


def _t(x: Labels) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.as_tensor(list(x), dtype=torch.long)


def accuracy(y_true: Labels, y_pred: Labels) -> float:
    t, p = _t(y_true), _t(y_pred)
    if t.shape != p.shape:
        raise ValueError(f"y_true has shape {tuple(t.shape)} but y_pred has {tuple(p.shape)}")
    return float((t == p).float().mean()) if len(t) else float("nan")


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


def majority_accuracy(y_train: Labels, y_true: Labels) -> float:
    """Accuracy of always predicting the most frequent training label."""
    train, t = _t(y_train), _t(y_true)
    if not len(train):
        raise ValueError("majority_accuracy: y_train is empty; the majority class needs training labels")
    majority = int(torch.bincount(train).argmax())
    return float((t == majority).float().mean())


def cosine_fidelity(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean cosine similarity between matching rows of two embedding matrices (N, D)."""
    if reference.shape != other.shape:
        raise ValueError(f"embedding shapes differ: {tuple(reference.shape)} vs {tuple(other.shape)}")
    return float(torch.nn.functional.cosine_similarity(reference.float(), other.float(), dim=-1).mean())


def _binary_auroc(y: np.ndarray, score: np.ndarray) -> float:
    """Mann–Whitney AUROC with average ranks for ties; NaN when one class is absent."""
    pos, n = int(y.sum()), len(y)
    if pos == 0 or pos == n:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    _, first, counts = np.unique(score[order], return_index=True, return_counts=True)
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(first + (counts - 1) / 2 + 1, counts)  # average ranks over ties
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * (n - pos)))


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC. ``scores`` (N,) for binary labels, or (N, C) probabilities: one-vs-rest, macro over classes present."""
    y, s = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    if y.ndim != 1 or s.ndim not in (1, 2) or len(y) != len(s):
        raise DataError(f"auroc: labels (N,) and scores (N,) or (N, C) expected; got {y.shape} and {s.shape}")
    if not np.isfinite(s).all():
        raise DataError("auroc: the scores hold NaN or infinite values")
    classes = 2 if s.ndim == 1 else s.shape[1]
    if len(y) and not np.isin(y, np.arange(classes)).all():
        want = "0 and 1 (positive)" if s.ndim == 1 else f"0..{classes - 1}"
        raise DataError(f"auroc: labels must be {want}; got values {sorted(set(y.tolist()))[:6]}")
    if s.ndim == 1:
        return _binary_auroc(y.astype(np.int64), s)
    if s.shape[1] == 2:
        return _binary_auroc((y == 1).astype(np.int64), s[:, 1])
    vals = [_binary_auroc((y == c).astype(np.int64), s[:, c]) for c in range(s.shape[1])]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


# --------------------------------------------------------------------------------------------------
# the registry

OutputsFn = Callable[[Outputs, Outputs | None], float]


@dataclass(frozen=True)
class Metric:
    """A registered metric.

    ``kind``: ``"outputs"`` (computed from one model's outputs), ``"paired"`` (needs a reference model's
    outputs on the same examples) or ``"measured"`` (a scalar measured outside: latency, size).
    """

    name: str
    fn: OutputsFn | None
    higher_is_better: bool
    kind: Literal["outputs", "paired", "measured"] = "outputs"
    description: str = ""

    def __call__(self, out: Outputs, ref: Outputs | None = None) -> float:
        if self.fn is None:
            raise DataError(f"metric {self.name!r} is measured, not computed from predictions")
        if self.kind == "paired" and ref is None:
            raise DataError(f"metric {self.name!r} compares two models: give the reference model's outputs")
        return self.fn(out, ref)


METRICS: Registry[Metric] = Registry("metric")


def metric(name: str, higher_is_better: bool, kind: Literal["outputs", "paired", "measured"] = "outputs",
           description: str = "") -> Callable[[OutputsFn], OutputsFn]:
    """Register ``fn(outputs, reference_outputs_or_None) -> float`` as metric ``name``."""

    def deco(fn: OutputsFn) -> OutputsFn:
        METRICS.add(name, Metric(name, fn, higher_is_better, kind, description or (fn.__doc__ or "").strip()))
        return fn

    return deco


def _empty(out: Outputs) -> bool:
    return len(out) == 0


@metric("accuracy", True)
def _accuracy(out: Outputs, ref: Outputs | None) -> float:
    """Share of examples predicted correctly."""
    return float("nan") if _empty(out) else float(out.correct.mean())


@metric("macro_f1", True)
def _macro_f1(out: Outputs, ref: Outputs | None) -> float:
    """Unweighted mean of per-class F1 over all the model's classes."""
    return float("nan") if _empty(out) else macro_f1(out.labels.tolist(), out.preds.tolist(), out.num_classes)


@metric("auroc", True)
def _auroc(out: Outputs, ref: Outputs | None) -> float:
    """ROC AUC of the class probabilities (one-vs-rest macro for more than two classes)."""
    return auroc(out.labels, out.probs)


@metric("nll", False)
def _nll(out: Outputs, ref: Outputs | None) -> float:
    """Mean cross-entropy of the true class (val loss)."""
    return negative_log_likelihood(out.probs, out.labels) if len(out) else float("nan")


@metric("perplexity", False)
def _perplexity(out: Outputs, ref: Outputs | None) -> float:
    """exp(mean cross-entropy)."""
    return math.exp(negative_log_likelihood(out.probs, out.labels)) if len(out) else float("nan")


@metric("brier", False)
def _brier(out: Outputs, ref: Outputs | None) -> float:
    """Multi-class Brier score."""
    return brier_score(out.probs, out.labels) if len(out) else float("nan")


@metric("ece", False)
def _ece(out: Outputs, ref: Outputs | None) -> float:
    """Expected calibration error, 15 equal-width confidence bins."""
    return float("nan") if _empty(out) else expected_calibration_error(out.probs, out.labels, n_bins=15)


@metric("agreement", True, "paired")
def _agreement(out: Outputs, ref: Outputs | None) -> float:
    """Share of examples where the model predicts what the reference model predicts."""
    assert ref is not None
    return float("nan") if _empty(out) else float((out.preds == ref.preds).mean())


@metric("flip_rate", False, "paired")
def _flip_rate(out: Outputs, ref: Outputs | None) -> float:
    """Share of examples whose prediction differs from the reference model's."""
    assert ref is not None
    return float("nan") if _empty(out) else float((out.preds != ref.preds).mean())


@metric("cos_fidelity", True, "paired")
def _cos_fidelity(out: Outputs, ref: Outputs | None) -> float:
    """Mean cosine similarity of the model's embeddings to the reference's."""
    assert ref is not None
    if out.features is None or ref.features is None:
        raise DataError("cos_fidelity needs embeddings (features) of both models")
    a, b = out.features, ref.features
    if a.shape != b.shape:
        raise DataError(f"cos_fidelity compares embeddings of one shape; got {a.shape} and reference {b.shape}")
    cos = (a * b).sum(1) / np.clip(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12, None)
    return float(cos.mean()) if len(cos) else float("nan")


METRICS.add("latency_ms", Metric("latency_ms", None, False, "measured", "batch-1 median latency (ms)"))
METRICS.add("size_mb", Metric("size_mb", None, False, "measured", "weights file size (MB = 10^6 bytes)"))
