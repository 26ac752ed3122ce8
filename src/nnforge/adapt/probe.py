"""Linear probes on frozen embeddings: a baseline, and the head initialisation of LP-FT.

LP-FT (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features and Underperform
Out-of-Distribution") first fits the head on frozen features, then fine-tunes everything: the features
move less, which helps on shifted test data (here: plays never seen in training).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from nnforge.errors import DataError, MissingDependencyError

__all__ = ["LinearProbe", "fit_linear_probe"]


@dataclass(frozen=True)
class LinearProbe:
    """A fitted multinomial logistic regression: weight (C, D), bias (C,), the chosen C, validation accuracy."""

    weight: torch.Tensor
    bias: torch.Tensor
    C: float
    val_accuracy: float | None

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return (features.float() @ self.weight.T + self.bias).argmax(-1)


def _check_labels(y: np.ndarray, n: int, num_classes: int | None, split: str) -> None:
    if y.ndim != 1 or len(y) != n or (len(y) and not np.issubdtype(y.dtype, np.integer)):
        raise DataError(f"the {split} labels must be one integer per feature row ({n}); got {len(y)} of dtype {y.dtype}")
    if not len(y):
        raise DataError(f"the {split} split is empty")
    if y.min() < 0 or (num_classes is not None and y.max() >= num_classes):
        raise DataError(f"the {split} labels must be in [0, {num_classes if num_classes is not None else '∞'}); "
                        f"got {int(y.min())}..{int(y.max())}")


def fit_linear_probe(train_x: torch.Tensor, train_y: list[int], val_x: torch.Tensor | None = None,
                     val_y: list[int] | None = None, Cs: tuple[float, ...] = (0.3, 1.0, 3.0, 10.0),
                     num_classes: int | None = None, class_weight: str | None = None) -> LinearProbe:
    """Logistic regression on features; ``C`` chosen on the validation split (never on test).

    Raises:
        DataError: labels are not one integer per row, fewer than two classes occur in training, or a label
            is negative or not below ``num_classes``.
    """
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError as exc:
        raise MissingDependencyError("linear probes need scikit-learn: pip install 'nnforge[data]'") from exc
    if not Cs:
        raise ValueError("Cs must name at least one regularisation strength")
    xtr, ytr = train_x.detach().cpu().numpy(), np.asarray(train_y)
    _check_labels(ytr, len(xtr), num_classes, "train")
    if len(np.unique(ytr)) < 2:
        raise DataError(f"a linear probe needs at least two classes in the training labels; got only "
                        f"{np.unique(ytr).tolist()}")
    if (val_x is None) != (val_y is None):
        raise DataError("give both val_x and val_y, or neither")
    if val_x is not None:
        _check_labels(np.asarray(val_y), len(val_x), num_classes, "validation")
    # without a validation split there is nothing to choose on: the first C is used
    candidates = Cs if val_x is not None else Cs[:1]
    fitted = []
    for c in candidates:
        clf = LogisticRegression(C=c, max_iter=3000, class_weight=class_weight).fit(xtr, ytr)
        score = float((clf.predict(val_x.detach().cpu().numpy()) == np.asarray(val_y)).mean()) if val_x is not None else None
        fitted.append((c, score, clf))
    c, score, clf = max(fitted, key=lambda t: -1.0 if t[1] is None else t[1])  # first best on ties
    k = num_classes or int(ytr.max()) + 1
    weight = torch.zeros(k, xtr.shape[1])
    bias = torch.zeros(k)
    coef, intercept = torch.from_numpy(clf.coef_).float(), torch.from_numpy(clf.intercept_).float()
    classes = clf.classes_.tolist()
    if len(classes) == 2 and coef.shape[0] == 1:  # binary: sklearn keeps one row for class 1
        coef, intercept = torch.cat([-coef / 2, coef / 2]), torch.cat([-intercept / 2, intercept / 2])
    weight[classes], bias[classes] = coef, intercept
    return LinearProbe(weight, bias, c, score)
