"""Models moved to another device than the CPU: their own helpers must feed them tensors on that device.

No GPU here: the ``meta`` device stands in for one, under :class:`GpuLikeMeta` (tests/_devices.py).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from _devices import GpuLikeMeta
from nnforge.models.text import TextClassifier


class _Tokenizer:
    """Word-length ids, padded with 0: the call signature of a Hugging Face tokenizer, CPU tensors out."""

    def __call__(self, texts: list[str], **_: Any) -> dict[str, torch.Tensor]:
        n = max(len(t.split()) for t in texts)
        ids = torch.tensor([[1 + len(w) for w in t.split()] + [0] * (n - len(t.split())) for t in texts])
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}


class _Encoder(nn.Module):
    config = SimpleNamespace(hidden_size=8, max_position_embeddings=32)

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> SimpleNamespace:
        return SimpleNamespace(last_hidden_state=self.emb(input_ids))


def test_text_classifier_on_another_device_tokenizes_onto_it() -> None:
    torch.manual_seed(0)
    model = TextClassifier(_Encoder(), _Tokenizer(), num_classes=2).to("meta")
    texts = ["to be or", "not to be"]
    with GpuLikeMeta():
        assert model.tokenize(texts)["input_ids"].device.type == "meta"
        assert model.predict_proba(texts).shape == (2, 2)
        assert model.embed(texts).shape == (2, 8)
