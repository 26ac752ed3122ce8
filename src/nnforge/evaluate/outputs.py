"""What a model produced on an evaluation split: labels, class probabilities, metadata — and nothing else.

Every metric, slice, statistical test and regression check works on :class:`Outputs`, so the same code
judges a text classifier, an image classifier or a quantized variant of either. Build them with
:func:`text_outputs` (a model with ``predict_proba(texts)``) or :func:`tensor_outputs` (``model(x) -> logits``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from nnforge.errors import DataError, ModelError

__all__ = ["Outputs", "text_outputs", "tensor_outputs", "check_paired"]


@dataclass(frozen=True)
class Outputs:
    """Per-example results of one model on one split.

    Attributes:
        labels: (N,) true class indices.
        probs: (N, C) class probabilities (rows sum to 1).
        meta: per-example metadata (e.g. ``{"play": "hamlet"}``), used by slices; may be empty.
        texts: the inputs when they are texts (text slices and perturbation probes read them).
        label_names: class names, index-aligned with ``probs``' columns.
        features: optional (N, D) embeddings (cosine fidelity reads them).
    """

    labels: np.ndarray
    probs: np.ndarray
    meta: list[dict[str, Any]] = field(default_factory=list)
    texts: list[str] | None = None
    label_names: list[str] = field(default_factory=list)
    features: np.ndarray | None = None

    def __post_init__(self) -> None:
        labels, probs = np.asarray(self.labels), np.asarray(self.probs, dtype=np.float64)
        if len(labels) and not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.bool_)):
            if not np.issubdtype(labels.dtype, np.floating) or not np.all(labels == np.round(labels)):
                raise DataError(f"outputs: labels must be class indices (whole numbers); got {labels[:4].tolist()}")
        if labels.ndim != 1 or probs.ndim != 2 or len(labels) != len(probs):
            raise DataError(f"outputs need labels (N,) and probs (N, C); got {labels.shape} and {probs.shape}")
        if len(labels) and (labels.min() < 0 or labels.max() >= probs.shape[1]):
            raise DataError(f"labels must be in [0, {probs.shape[1]}) to match the model's {probs.shape[1]} "
                            f"classes; got {int(labels.min())}..{int(labels.max())}")
        if not np.isfinite(probs).all():
            raise DataError("the model produced NaN or infinite probabilities")
        for name, seq in (("meta", self.meta), ("texts", self.texts or [])):
            if seq and len(seq) != len(labels):
                raise DataError(f"outputs: {name} has {len(seq)} entries for {len(labels)} examples")
        if self.label_names and len(self.label_names) != probs.shape[1]:
            raise DataError(f"{len(self.label_names)} label names for a model with {probs.shape[1]} classes")
        if self.features is not None:
            feats = np.asarray(self.features)
            if feats.ndim != 2 or len(feats) != len(labels) or not np.issubdtype(feats.dtype, np.number):
                raise DataError(f"outputs: features must be (N, D) with N = {len(labels)} examples; got {feats.shape}")
            if not np.isfinite(feats).all():
                raise DataError("the model produced NaN or infinite features")
            object.__setattr__(self, "features", feats)
        object.__setattr__(self, "labels", labels.astype(np.int64))
        object.__setattr__(self, "probs", probs)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return int(self.probs.shape[1])

    @property
    def preds(self) -> np.ndarray:
        return self.probs.argmax(axis=1)

    @property
    def correct(self) -> np.ndarray:
        return (self.preds == self.labels).astype(np.float64)

    def subset(self, idx: np.ndarray) -> Outputs:
        """The examples at ``idx`` (indices may repeat: bootstrap resamples use this).

        Metadata and texts are not carried (metrics never read them; slices are built on the full outputs),
        and nothing is re-validated: bootstrap loops call this thousands of times.
        """
        sub = object.__new__(Outputs)
        for name, value in (("labels", self.labels[idx]), ("probs", self.probs[idx]), ("meta", []), ("texts", None),
                            ("label_names", self.label_names),
                            ("features", self.features[idx] if self.features is not None else None)):
            object.__setattr__(sub, name, value)
        return sub

    def fingerprint(self) -> str:
        """SHA-256 of the labels (and texts): two outputs are paired only when these match."""
        h = hashlib.sha256(self.labels.tobytes())
        for t in self.texts or []:
            h.update(t.encode("utf-8", "replace") + b"\0")
        return h.hexdigest()


def check_paired(a: Outputs, b: Outputs, what: str) -> None:
    """Raise unless ``a`` and ``b`` are the same examples in the same order (paired comparisons need it)."""
    if len(a) != len(b) or a.fingerprint() != b.fingerprint():
        raise DataError(f"{what}: the two models were evaluated on different examples ({len(a)} vs {len(b)}); "
                        "paired comparisons need the same split in the same order")
    if a.num_classes != b.num_classes:
        raise ModelError(f"{what}: models disagree on the number of classes ({a.num_classes} vs {b.num_classes})")


def _check_classes(model_classes: int, labels: Sequence[int], label_names: Sequence[str], where: str) -> None:
    n_data = len(label_names) if label_names else (max(labels) + 1 if len(labels) else 0)
    if label_names and model_classes != len(label_names):
        raise ModelError(f"{where}: the model has {model_classes} classes but the data has {len(label_names)} "
                         f"({', '.join(label_names)})")
    if n_data > model_classes:
        raise ModelError(f"{where}: labels go up to {n_data - 1} but the model has only {model_classes} classes")


def text_outputs(model: Any, texts: list[str], labels: Sequence[int], meta: Sequence[dict[str, Any]] | None = None,
                 label_names: Sequence[str] = (), *, features: bool = False, batch_size: int = 64) -> Outputs:
    """Run a text classifier (``predict_proba(texts)``; ``embed(texts)`` when ``features``) over a split."""
    if not hasattr(model, "predict_proba"):
        raise ModelError(f"{type(model).__name__} is not a text classifier (it has no predict_proba(texts))")
    if len(texts) != len(labels):
        raise DataError(f"{len(texts)} texts but {len(labels)} labels")
    n_model = getattr(model, "num_classes", None)
    if isinstance(n_model, int):
        _check_classes(n_model, labels, label_names, "text_outputs")
    model.eval()
    probs = model.predict_proba(texts, batch_size=batch_size).float().cpu().numpy()  # a GPU model's are on it
    feats = model.embed(texts, batch_size=batch_size).float().cpu().numpy() if features else None
    return Outputs(np.asarray(labels), probs, list(meta or []), list(texts), list(label_names), feats)


@torch.no_grad()
def tensor_outputs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor | Sequence[int],
                   meta: Sequence[dict[str, Any]] | None = None, label_names: Sequence[str] = (),
                   batch_size: int = 512) -> Outputs:
    """Run ``model(x) -> logits`` over ``x`` in batches; a wrong input shape fails before the first batch."""
    y_arr = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y)
    if len(x) != len(y_arr):
        raise DataError(f"{len(x)} inputs but {len(y_arr)} labels")
    was_training = model.training
    model.eval()
    try:
        try:
            first = model(x[:1])
        except (RuntimeError, ValueError) as exc:
            raise ModelError(f"the model does not accept inputs of shape {tuple(x.shape[1:])} (per example): "
                             f"{str(exc).splitlines()[0]}") from None
        if first.ndim != 2:
            raise ModelError(f"the model should return logits (B, C); it returned shape {tuple(first.shape)}")
        _check_classes(int(first.shape[1]), y_arr.tolist(), label_names, "tensor_outputs")
        probs = torch.cat([torch.softmax(model(x[i:i + batch_size]).float(), dim=-1)
                           for i in range(0, len(x), batch_size)]).cpu().numpy()  # from the model's device
    finally:
        model.train(was_training)
    return Outputs(y_arr, probs, list(meta or []), None, list(label_names))
