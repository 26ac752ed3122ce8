"""How well OOD scores separate in-distribution from out-of-distribution inputs.

Conventions (those of the OOD-detection literature, e.g. Hendrycks & Gimpel 2017, Liu et al. 2020):

- scores are higher for more out-of-distribution inputs;
- :func:`auroc` treats OOD as the positive class: the probability that a random OOD input scores higher
  than a random in-distribution one (ties count one half). 0.5 is chance, 1.0 perfect separation;
- :func:`fpr_at_tpr` ("FPR at 95% TPR", FPR95) treats in-distribution as the positive class: the
  threshold keeps ``tpr`` (95%) of the in-distribution inputs, and the figure is the fraction of OOD
  inputs that pass that threshold as in-distribution. 0.0 is perfect, lower is better.

Both are computed exactly from ranks (no scikit-learn needed).
"""

from __future__ import annotations

from typing import Any

import torch

from nnforge.errors import DataError

__all__ = ["auroc", "fpr_at_tpr", "threshold_at_recall"]


def _scores(x: Any, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64).reshape(-1)
    if t.numel() == 0:
        raise DataError(f"{name} is empty; need at least one score")
    if not torch.isfinite(t).all():
        raise DataError(f"{name} holds NaN or infinite values")
    return t


def _average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks with ties sharing their average rank (as in the Mann-Whitney U statistic)."""
    order = torch.argsort(values, stable=True)
    sorted_v = values[order]
    ranks = torch.empty_like(values)
    n = len(values)
    # boundaries of runs of equal values
    new_run = torch.ones(n, dtype=torch.bool)
    new_run[1:] = sorted_v[1:] != sorted_v[:-1]
    run_id = torch.cumsum(new_run.long(), 0) - 1
    starts = torch.nonzero(new_run).reshape(-1).to(torch.float64)
    ends = torch.cat([starts[1:], torch.tensor([float(n)], dtype=torch.float64)])
    avg = (starts + 1 + ends) / 2  # mean of ranks start+1 .. end
    ranks[order] = avg[run_id]
    return ranks


def auroc(id_scores: Any, ood_scores: Any) -> float:
    """Area under the ROC curve with OOD as the positive class (higher score = more OOD)."""
    a, b = _scores(id_scores, "id_scores"), _scores(ood_scores, "ood_scores")
    ranks = _average_ranks(torch.cat([a, b]))
    u = float(ranks[len(a):].sum()) - len(b) * (len(b) + 1) / 2
    return u / (len(a) * len(b))


def threshold_at_recall(id_scores: Any, recall: float = 0.95) -> float:
    """The smallest threshold that accepts (score <= threshold) at least ``recall`` of ``id_scores``."""
    if not 0.0 < recall <= 1.0:
        raise DataError(f"recall must be in (0, 1]; got {recall}")
    s = torch.sort(_scores(id_scores, "id_scores")).values
    k = max(1, int(torch.ceil(torch.tensor(recall * len(s) - 1e-9)).item()))  # accepted count
    return float(s[k - 1])


def fpr_at_tpr(id_scores: Any, ood_scores: Any, tpr: float = 0.95) -> float:
    """Fraction of OOD inputs accepted when the threshold keeps ``tpr`` of the in-distribution inputs."""
    threshold = threshold_at_recall(id_scores, tpr)
    return float((_scores(ood_scores, "ood_scores") <= threshold).double().mean())
