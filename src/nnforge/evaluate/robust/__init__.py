"""Robustness probes: adversarial attacks (FGSM, PGD L∞/L2), robust accuracy, adversarial training as a
training callback, and seeded text perturbations with a text classifier's robustness report.

    from nnforge.evaluate.robust import AttackConfig, pgd, robust_accuracy
    x_adv = pgd(model, x, y, eps=0.1, steps=10)                        # inputs in [0, 1]
    acc = robust_accuracy(model, x, y, AttackConfig(kind="pgd", eps=0.1))

    from nnforge.evaluate.robust import perturb_texts, text_robustness
    report = text_robustness(predict, texts, labels, rate=0.05)        # accuracy and flip rate per perturbation

Adversarial training: ``fit(..., callbacks=[AdversarialTraining(AttackConfig(eps=0.1, steps=7))])``; add
``nnforge.train.WeightAverage(decay=0.995)`` to the callbacks to end on an average of the weights (less robust overfitting).
"""

from __future__ import annotations

from nnforge.evaluate.robust._attacks import AttackConfig, AttackLoss, attack, fgsm, pgd, robust_accuracy
from nnforge.evaluate.robust._text import TEXT_PERTURBATIONS, TextPerturbation, perturb_texts, text_robustness
from nnforge.evaluate.robust._training import AdversarialTraining, TradesLoss, adversarial_batch

__all__ = [
    "AttackConfig",
    "AttackLoss",
    "attack",
    "fgsm",
    "pgd",
    "robust_accuracy",
    "TEXT_PERTURBATIONS",
    "TextPerturbation",
    "perturb_texts",
    "text_robustness",
    "AdversarialTraining",
    "adversarial_batch",
    "TradesLoss",
]
