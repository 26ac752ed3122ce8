"""Calibration: does a classifier's confidence match how often it is right?

Measures: expected calibration error (ECE, Guo et al. 2017, "On Calibration of Modern Neural Networks":
equal-width bins over the max-probability confidence), the multi-class Brier score, negative
log-likelihood, and the per-bin data of a reliability diagram (plotted with matplotlib).

Repair: temperature scaling (Guo et al. 2017), one scalar ``T > 0`` dividing the logits, fitted on a
validation split by minimising the negative log-likelihood. It leaves every argmax, hence accuracy,
unchanged, and only moves confidence::

    ts = TemperatureScaling().fit(val_logits, val_labels)
    ece_before = expected_calibration_error(torch.softmax(test_logits, -1), test_labels)
    ece_after = expected_calibration_error(ts.probs(test_logits), test_labels)

Inputs are tensors: probabilities or logits ``(N, C)`` and integer labels ``(N,)`` (numpy arrays and
sequences are accepted too). Bad input raises :class:`~nnforge.errors.DataError` before any computation.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from nnforge.errors import DataError, MissingDependencyError, ModelError, check_output_path

__all__ = ["expected_calibration_error", "brier_score", "negative_log_likelihood", "ReliabilityDiagram",
           "reliability_diagram", "plot_reliability", "fit_temperature", "TemperatureScaling"]

log = logging.getLogger(__name__)

ArrayLike = torch.Tensor | Sequence[Any] | Any  # numpy arrays included

# the search interval of log T: T in [0.01, 100] covers every model we have seen by a wide margin
_LOG_T_BOUNDS = (math.log(1e-2), math.log(1e2))


# --------------------------------------------------------------------------------------------------
# input checks


def _matrix(x: ArrayLike, what: str, where: str) -> torch.Tensor:
    """``x`` as a float64 (N, C) tensor with N >= 1, C >= 2 and only finite values."""
    try:
        t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{where}: {what} must be a (N, C) tensor of numbers; got {type(x).__name__} ({exc})") from None
    if t.dtype == torch.bool or t.is_complex():
        raise DataError(f"{where}: {what} must be real numbers; got dtype {t.dtype}")
    if t.dim() != 2:
        raise DataError(f"{where}: {what} must have shape (N, C); got shape {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise DataError(f"{where}: {what} is empty (shape {tuple(t.shape)}); give at least one example")
    if t.shape[1] < 2:
        raise DataError(f"{where}: {what} must have at least 2 classes (columns); got shape {tuple(t.shape)}")
    t = t.to(torch.float64)
    bad = ~torch.isfinite(t)
    if bad.any():
        rows = bad.any(dim=1).nonzero().flatten()
        raise DataError(f"{where}: {what} has {int(bad.sum())} NaN or infinite value(s), first in row(s) "
                        f"{rows[:5].tolist()}; remove or repair them")
    return t


def _labels(y: ArrayLike, n: int, num_classes: int, where: str) -> torch.Tensor:
    """``y`` as a long (N,) tensor of class indices in [0, num_classes)."""
    try:
        t = y.detach() if isinstance(y, torch.Tensor) else torch.as_tensor(y)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise DataError(f"{where}: labels must be a 1-D sequence of class indices; got {type(y).__name__} "
                        f"({exc})") from None
    if t.dim() != 1:
        raise DataError(f"{where}: labels must be 1-D (N,); got shape {tuple(t.shape)}")
    if t.shape[0] != n:
        raise DataError(f"{where}: {n} rows of scores but {t.shape[0]} labels; give one label per row")
    if t.is_floating_point():
        if not torch.isfinite(t).all() or not torch.equal(t, t.round()):
            raise DataError(f"{where}: labels must be integer class indices; got non-integer values")
    elif t.dtype == torch.bool or t.is_complex():
        raise DataError(f"{where}: labels must be integer class indices; got dtype {t.dtype}")
    t = t.to(torch.long)
    out = (t < 0) | (t >= num_classes)
    if out.any():
        raise DataError(f"{where}: labels must be in [0, {num_classes}) for {num_classes} classes; got "
                        f"{sorted(set(t[out].tolist()))[:5]} (first at row {int(out.nonzero()[0])})")
    return t


def _probs(probs: ArrayLike, labels: ArrayLike, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked probabilities (rows in [0, 1] summing to 1) and labels."""
    p = _matrix(probs, "probs", where)
    if (p < -1e-6).any() or (p > 1 + 1e-6).any():
        raise DataError(f"{where}: probs must lie in [0, 1]; got values in [{float(p.min()):.4g}, "
                        f"{float(p.max()):.4g}]. Pass softmax(logits), not logits")
    sums = p.sum(dim=1)
    worst = int((sums - 1).abs().argmax())
    if abs(float(sums[worst]) - 1) > 1e-3:
        raise DataError(f"{where}: each row of probs must sum to 1; row {worst} sums to {float(sums[worst]):.6g}")
    return p.clamp(0, 1), _labels(labels, p.shape[0], p.shape[1], where).to(p.device)  # labels may be a list


def _check_bins(n_bins: int, where: str) -> None:
    if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
        raise DataError(f"{where}: the 'n_bins' parameter must be an int >= 1. Got {n_bins!r} instead.")


# --------------------------------------------------------------------------------------------------
# measures


def _binned(p: torch.Tensor, y: torch.Tensor, n_bins: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per bin: count, summed confidence, summed correctness. Bins are (lo, hi], the first [0, 1/M]."""
    conf, pred = p.max(dim=1)
    correct = (pred == y).to(torch.float64)
    # boundaries and sums on p's device: bucketize and index_add_ refuse mixing it with the CPU
    inner = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64, device=p.device)[1:-1]
    idx = torch.bucketize(conf, inner, right=False)  # boundaries[i-1] < conf <= boundaries[i]
    counts = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64, device=p.device).index_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64, device=p.device).index_add_(0, idx, correct)
    return counts, conf_sum, acc_sum


def expected_calibration_error(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> float:
    """ECE: the count-weighted mean gap between accuracy and mean confidence over ``n_bins`` equal-width bins.

    ``ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|``, where the confidence is the max probability and a
    prediction is correct when its argmax equals the label. A fraction in [0, 1]; 0 is perfectly calibrated.
    """
    _check_bins(n_bins, "expected_calibration_error")
    p, y = _probs(probs, labels, "expected_calibration_error")
    counts, conf_sum, acc_sum = _binned(p, y, n_bins)
    return float((conf_sum - acc_sum).abs().sum() / p.shape[0])


def brier_score(probs: ArrayLike, labels: ArrayLike) -> float:
    """Multi-class Brier score: mean over examples of ``sum_c (p_c - [y = c])^2``, in [0, 2]; lower is better."""
    p, y = _probs(probs, labels, "brier_score")
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(torch.float64)
    return float(((p - onehot) ** 2).sum(dim=1).mean())


def negative_log_likelihood(probs: ArrayLike, labels: ArrayLike, eps: float = 1e-12) -> float:
    """Mean ``-log p_y`` (nats), with probabilities clamped at ``eps`` so a confident mistake stays finite."""
    p, y = _probs(probs, labels, "negative_log_likelihood")
    return float(-p.gather(1, y[:, None]).clamp_min(eps).log().mean())


@dataclass(frozen=True)
class ReliabilityDiagram:
    """Per-bin data of a reliability diagram; JSON-serialisable through :meth:`to_dict`.

    ``confidence[b]`` and ``accuracy[b]`` are ``None`` for an empty bin. ``ece`` is the ECE of these bins.
    """

    bin_edges: list[float]
    counts: list[int]
    confidence: list[float | None]
    accuracy: list[float | None]
    ece: float
    n: int

    @property
    def n_bins(self) -> int:
        return len(self.counts)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "n_bins": self.n_bins}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> ReliabilityDiagram:
        return cls(**{k: doc[k] for k in ("bin_edges", "counts", "confidence", "accuracy", "ece", "n")})


def reliability_diagram(probs: ArrayLike, labels: ArrayLike, n_bins: int = 15) -> ReliabilityDiagram:
    """Counts, mean confidence and accuracy per equal-width confidence bin (the bins of the ECE)."""
    _check_bins(n_bins, "reliability_diagram")
    p, y = _probs(probs, labels, "reliability_diagram")
    counts, conf_sum, acc_sum = _binned(p, y, n_bins)
    n = p.shape[0]
    conf = [float(s / c) if c else None for s, c in zip(conf_sum, counts, strict=True)]
    acc = [float(s / c) if c else None for s, c in zip(acc_sum, counts, strict=True)]
    return ReliabilityDiagram(bin_edges=torch.linspace(0, 1, n_bins + 1, dtype=torch.float64).tolist(),
                              counts=[int(c) for c in counts], confidence=conf, accuracy=acc,
                              ece=float((conf_sum - acc_sum).abs().sum() / n), n=n)


def plot_reliability(diagrams: Mapping[str, ReliabilityDiagram], path: str | os.PathLike[str],
                     title: str | None = None) -> Path:
    """Draw one reliability diagram per entry side by side (accuracy bars, gap to confidence, bin counts).

    The image is written atomically (a temporary file in the same folder, then a rename); the format
    follows the suffix of ``path`` (``.png``, ``.svg``, ``.pdf``). Returns the path written.
    """
    if not diagrams:
        raise DataError("plot_reliability: give at least one diagram ({name: ReliabilityDiagram})")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingDependencyError("plots need matplotlib: pip install 'nnforge[report]'") from exc
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    k = len(diagrams)
    fig, axes = plt.subplots(2, k, figsize=(3.8 * k, 4.6), squeeze=False, sharex=True,
                             gridspec_kw={"height_ratios": [3, 1]})
    for j, (name, d) in enumerate(diagrams.items()):
        top, bottom = axes[0][j], axes[1][j]
        width = 1.0 / d.n_bins
        lefts = d.bin_edges[:-1]
        acc = [a if a is not None else 0.0 for a in d.accuracy]
        conf = [c if c is not None else 0.0 for c in d.confidence]
        top.bar(lefts, acc, width=width, align="edge", color="tab:blue", edgecolor="black", lw=0.5,
                label="accuracy")
        gaps = [(lo, min(a, c), abs(c - a)) for lo, a, c, n in zip(lefts, acc, conf, d.counts, strict=True) if n]
        top.bar([g[0] for g in gaps], [g[2] for g in gaps], bottom=[g[1] for g in gaps], width=width, align="edge",
                color="tab:red", alpha=0.3, edgecolor="tab:red", hatch="//", lw=0.5, label="gap to confidence")
        top.plot([0, 1], [0, 1], "--", color="gray", lw=1)
        top.set_xlim(0, 1), top.set_ylim(0, 1)
        top.set_title(f"{name}\nECE {d.ece:.4f} (n={d.n}, {d.n_bins} bins)", fontsize=9)
        bottom.bar(lefts, d.counts, width=width, align="edge", color="tab:gray", edgecolor="black", lw=0.5)
        bottom.set_xlabel("confidence (max probability)")
        if j == 0:
            top.set_ylabel("accuracy"), bottom.set_ylabel("count")
            top.legend(loc="upper left", fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    check_output_path(out)
    # a fresh name in the same folder (not mkstemp, whose 0600 mode would survive the rename)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fig.savefig(tmp, dpi=120, format=(out.suffix or ".png").lstrip(".").lower())
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return out


# --------------------------------------------------------------------------------------------------
# temperature scaling


def _nll_at(logits: torch.Tensor, labels: torch.Tensor, log_t: float) -> float:
    scaled = logits / math.exp(log_t)
    return float(torch.nn.functional.cross_entropy(scaled, labels))


def fit_temperature(val_logits: ArrayLike, val_labels: ArrayLike, tol: float = 1e-7) -> float:
    """The temperature ``T > 0`` minimising the validation NLL of ``softmax(logits / T)``.

    The NLL is convex in ``1/T``, hence unimodal in ``log T``: a golden-section search over ``log T`` in
    [log 0.01, log 100] finds its minimum deterministically, without a learning rate or a start point.
    A minimum on the boundary (e.g. separable validation data, where NLL falls forever as T -> 0) is
    returned as the boundary value, with a warning in the log.

    Args:
        val_logits: (N, C) logits of a validation split (never the test split).
        val_labels: (N,) class indices.
        tol: stop when the bracket on ``log T`` is narrower than this.
    """
    z = _matrix(val_logits, "val_logits", "fit_temperature")
    y = _labels(val_labels, z.shape[0], z.shape[1], "fit_temperature").to(z.device)  # labels may be a list
    lo, hi = _LOG_T_BOUNDS
    g = (math.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = _nll_at(z, y, a), _nll_at(z, y, b)
    while hi - lo > tol:
        if fa <= fb:  # ties go left: deterministic and prefers the sharper of equal fits
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = _nll_at(z, y, a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = _nll_at(z, y, b)
    log_t = (lo + hi) / 2
    if min(log_t - _LOG_T_BOUNDS[0], _LOG_T_BOUNDS[1] - log_t) < 1e-3:
        log.warning("fit_temperature: the NLL is minimised at the search boundary T=%.4g; the validation "
                    "logits may be separable or constant", math.exp(log_t))
    return math.exp(log_t)


class TemperatureScaling:
    """Post-hoc calibration by one temperature: ``softmax(logits / T)``; argmax, hence accuracy, unchanged.

    ``fit`` on validation logits, then ``transform`` (scaled logits) or ``probs`` on new ones; ``to_dict``
    / ``from_dict`` store and restore the fitted temperature as JSON.
    """

    type_name = "temperature_scaling"
    version = 1

    def __init__(self, temperature: float | None = None) -> None:
        if temperature is not None:
            temperature = self._check_t(temperature, "TemperatureScaling")
        self.temperature = temperature

    @staticmethod
    def _check_t(value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise DataError(f"{where}: the temperature must be a finite number > 0. Got {value!r} instead.")
        return float(value)

    @property
    def fitted(self) -> bool:
        return self.temperature is not None

    def fit(self, val_logits: ArrayLike, val_labels: ArrayLike) -> TemperatureScaling:
        """Fit ``T`` on validation logits and labels (see :func:`fit_temperature`); returns ``self``."""
        self.temperature = fit_temperature(val_logits, val_labels)
        return self

    def _t(self) -> float:
        if self.temperature is None:
            raise ModelError("TemperatureScaling is not fitted: call fit(val_logits, val_labels) first, or give "
                             "TemperatureScaling(temperature=...)")
        return self.temperature

    def transform(self, logits: ArrayLike) -> torch.Tensor:
        """Scaled logits ``logits / T``, (N, C), in the dtype given (float32 for non-float input)."""
        t = self._t()
        src = logits if isinstance(logits, torch.Tensor) else torch.as_tensor(logits)
        _matrix(src, "logits", "TemperatureScaling.transform")
        dtype = src.dtype if src.is_floating_point() else torch.float32
        return src.detach().to(dtype) / t

    def probs(self, logits: ArrayLike) -> torch.Tensor:
        """Calibrated probabilities ``softmax(logits / T)``, (N, C)."""
        return torch.softmax(self.transform(logits), dim=-1)

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type_name, "version": self.version, "data": {"temperature": self._t()}}

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> TemperatureScaling:
        """Restore from :meth:`to_dict`'s output; anything else raises DataError naming what is wrong."""
        if not isinstance(doc, Mapping) or doc.get("type") != cls.type_name:
            got = doc.get("type") if isinstance(doc, Mapping) else type(doc).__name__
            raise DataError(f"TemperatureScaling.from_dict: expected type {cls.type_name!r}; got {got!r}")
        if doc.get("version") != cls.version:
            raise DataError(f"TemperatureScaling.from_dict: version {doc.get('version')!r} is not supported "
                            f"(this nnforge reads version {cls.version})")
        data = doc.get("data")
        if not isinstance(data, Mapping) or "temperature" not in data:
            raise DataError("TemperatureScaling.from_dict: 'data.temperature' is missing")
        return cls(cls._check_t(data["temperature"], "TemperatureScaling.from_dict"))

    def __repr__(self) -> str:
        return f"TemperatureScaling(temperature={self.temperature!r})"
