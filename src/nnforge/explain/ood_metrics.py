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

import numpy as np
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


def auroc(id_scores: Any, ood_scores: Any) -> float:
    """Area under the ROC curve with OOD as the positive class (higher score = more OOD)."""
    from nnforge.evaluate.metrics import auroc as labelled_auroc  # one rank-based AUROC in the package

    a, b = _scores(id_scores, "id_scores"), _scores(ood_scores, "ood_scores")
    labels = np.concatenate([np.zeros(len(a), dtype=np.int64), np.ones(len(b), dtype=np.int64)])
    return labelled_auroc(labels, torch.cat([a, b]).numpy())


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
