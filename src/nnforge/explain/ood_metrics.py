"""How well OOD scores separate in-distribution from out-of-distribution inputs.

Conventions (those of the OOD-detection literature, e.g. Hendrycks & Gimpel 2017, Liu et al. 2020):

- scores are higher for more out-of-distribution inputs;
- :func:`auroc` treats OOD as the positive class: the probability that a random OOD input scores higher
  than a random in-distribution one (ties count one half). 0.5 is chance, 1.0 perfect separation;
- :func:`fpr_at_tpr` ("FPR at 95% TPR", FPR95) treats in-distribution as the positive class: the
  threshold keeps ``tpr`` (95%) of the in-distribution inputs, and the figure is the fraction of OOD
  inputs that pass that threshold as in-distribution. 0.0 is perfect, lower is better;
- a score of ``+inf`` (an input the detector cannot judge, e.g. ``token-ngram`` on a text with no tokens)
  is the most out-of-distribution score: always flagged; NaN and ``-inf`` are refused.

Both are computed exactly from ranks (no scikit-learn needed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nnforge.errors import DataError

__all__ = ["auroc", "fpr_at_tpr", "threshold_at_recall"]


def _scores(x: Any, name: str, allow_inf: bool = False) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to("cpu", torch.float64).reshape(-1)
    if t.numel() == 0:
        raise DataError(f"{name} is empty; need at least one score")
    bad = ~torch.isfinite(t) & ~((t == torch.inf) if allow_inf else torch.zeros_like(t, dtype=torch.bool))
    if bad.any():
        raise DataError(f"{name} holds NaN or {'-' if allow_inf else ''}infinite values")
    return t


def auroc(id_scores: Any, ood_scores: Any) -> float:
    """Area under the ROC curve with OOD as the positive class (higher score = more OOD)."""
    from nnforge.evaluate.metrics import auroc as labelled_auroc  # one rank-based AUROC in the package

    a, b = _scores(id_scores, "id_scores", True), _scores(ood_scores, "ood_scores", True)
    both = torch.cat([a, b])
    finite = both[torch.isfinite(both)]
    top = float(finite.max()) + 1.0 if finite.numel() else 0.0
    a, b = a.clamp(max=top), b.clamp(max=top)  # +inf (cannot judge, always flagged) ranks above every finite score
    labels = np.concatenate([np.zeros(len(a), dtype=np.int64), np.ones(len(b), dtype=np.int64)])
    return labelled_auroc(labels, torch.cat([a, b]).numpy())


def threshold_at_recall(id_scores: Any, recall: float = 0.95, *, allow_inf: bool = False) -> float:
    """The smallest threshold that accepts (score <= threshold) at least ``recall`` of ``id_scores``.

    With ``allow_inf``, ``+inf`` scores (inputs a detector cannot judge, always flagged, e.g. ``token-ngram``
    on a text with no tokens) count as rejected rows; the threshold must still be finite.
    """
    if not 0.0 < recall <= 1.0:
        raise DataError(f"recall must be in (0, 1]; got {recall}")
    s = torch.sort(_scores(id_scores, "id_scores", allow_inf)).values
    k = max(1, int(torch.ceil(torch.tensor(recall * len(s) - 1e-9)).item()))  # accepted count
    if not torch.isfinite(s[k - 1]):
        n_inf = int((s == torch.inf).sum())
        raise DataError(f"{n_inf} of {len(s)} in-distribution scores are +inf (inputs the detector cannot judge, "
                        f"e.g. texts with no tokens for token-ngram), so no finite threshold accepts {recall:g} "
                        "of them: drop those inputs or ask for a lower recall")
    return float(s[k - 1])


def fpr_at_tpr(id_scores: Any, ood_scores: Any, tpr: float = 0.95) -> float:
    """Fraction of OOD inputs accepted when the threshold keeps ``tpr`` of the in-distribution inputs."""
    threshold = threshold_at_recall(id_scores, tpr, allow_inf=True)
    return float((_scores(ood_scores, "ood_scores", True) <= threshold).double().mean())
