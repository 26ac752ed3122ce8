"""The top of a transformer text classifier as a module of its own, for per-example gradients of text.

Hugging Face encoders build their attention masks with helpers that branch on tensor values (``mask.all()``),
which ``torch.func.vmap`` refuses. :class:`~nnforge.models.TextClassifier`'s split forward (``hidden_at`` /
``forward_from``) runs the layers without those helpers, and attributing through the top layers only is also what
keeps a 22M-parameter encoder affordable: the hidden states entering ``first_layer`` are computed once, without
gradients, and only the layers above them and the head are differentiated per example.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from nnforge.errors import ConfigError

__all__ = ["TextClassifierTop"]


class TextClassifierTop(nn.Module):
    """Layers ``first_layer …`` and the head of a BERT-style :class:`~nnforge.models.TextClassifier`.

    Its parameters are the classifier's own tensors (shared, not copied), named ``layers.<i>.…`` (i counted from
    ``first_layer``) and ``head.…``. ``forward(hidden, attention_mask)`` equals the classifier's logits when
    ``hidden`` comes from :meth:`inputs`.

    >>> top = TextClassifierTop(classifier, first_layer=5)  # doctest: +SKIP
    >>> scores = attribute_data(top, (top.inputs(classifier.tokenize(texts)), labels), ...)  # doctest: +SKIP

    Raises:
        ModelError: the classifier's encoder is not BERT-style (no ``embeddings`` and ``encoder.layer``).
        ConfigError: ``first_layer`` is not in ``0 … num_layers``.
    """

    classifier: Any  # the whole TextClassifier, kept outside the module tree

    def __init__(self, classifier: Any, first_layer: int) -> None:
        super().__init__()
        count = int(classifier.num_layers)  # raises ModelError for an encoder without a split forward
        if isinstance(first_layer, bool) or not isinstance(first_layer, int) or not 0 <= first_layer <= count:
            raise ConfigError(f"first_layer must be an integer in [0, {count}] (the encoder has {count} layers); "
                              f"got {first_layer!r}")
        self.layers = nn.ModuleList(list(classifier.encoder.encoder.layer)[first_layer:])  # the same modules
        self.head = classifier.head
        self.first_layer = first_layer
        object.__setattr__(self, "classifier", classifier)  # not a submodule: its lower layers are not ours

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits from the hidden states entering ``first_layer``: (B, T, H), (B, T) → (B, C)."""
        return self.classifier.forward_from(self.first_layer, hidden, attention_mask)  # type: ignore[no-any-return]

    @torch.no_grad()
    def inputs(self, batch: Mapping[str, torch.Tensor], batch_size: int = 64) -> dict[str, torch.Tensor]:
        """``{"hidden", "attention_mask"}`` for tokenized ``batch`` (``input_ids``, ``attention_mask``), computed in
        eval mode, ``batch_size`` rows at a time: the inputs of :func:`attribute_data` for this module."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        flags = [(m, m.training) for m in self.classifier.modules()]
        self.classifier.eval()
        try:
            hidden = [self.classifier.hidden_at(self.first_layer, ids[i : i + batch_size], mask[i : i + batch_size])
                      for i in range(0, len(ids), batch_size)]
        finally:
            for m, flag in flags:
                m.training = flag
        return {"hidden": torch.cat(hidden), "attention_mask": mask}
