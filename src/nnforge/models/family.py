"""Which family a model belongs to: what its inputs and outputs are, for everything that treats families
differently (export, explanations).

- ``text-classifier`` (:class:`~nnforge.models.text.TextClassifier`): texts → token ids and mask → logits (B, C);
- ``char-lm`` (char-GPT): character ids (B, T) → next-character logits (B, T, V);
- ``image-classifier`` (digits CNN and MLP): 8 × 8 images, as (B, 64) or (B, 1, 8, 8) → logits (B, C);
- ``tensor-classifier`` (any other module): a float tensor (B, …) → logits (B, C).
"""

from __future__ import annotations

from torch import nn

__all__ = ["FAMILIES", "family_of"]

FAMILIES = ("text-classifier", "char-lm", "image-classifier", "tensor-classifier")


def family_of(model: nn.Module) -> str:
    """The family of ``model``: one of :data:`FAMILIES`."""
    from nnforge.models.char_gpt import CharGPT
    from nnforge.models.digits import DigitsCNN, DigitsMLP
    from nnforge.models.text import TextClassifier

    if isinstance(model, TextClassifier):
        return "text-classifier"
    if isinstance(model, CharGPT):
        return "char-lm"
    if isinstance(model, DigitsCNN | DigitsMLP):
        return "image-classifier"
    return "tensor-classifier"
