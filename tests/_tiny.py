"""Tiny seeded inputs and models shared by test files (importable because tests/ holds conftest.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from nnforge.models import build


def images(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random 8x8 one-channel images in [0, 1] and random digit labels."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)


def small_cnn(seed: int = 0) -> nn.Module:
    """A narrow digits CNN (with batch norm), seeded."""
    torch.manual_seed(seed)
    return build("digits-cnn", channels=(4, 8), hidden=16)


class _Tokenizer:
    """Word-length ids between [CLS]=1 and [SEP]=2, padded with 0: a Hugging Face tokenizer's call, CPU tensors out."""

    all_special_ids = [0, 1, 2]

    def __call__(self, texts: list[str], **_: Any) -> dict[str, torch.Tensor]:
        rows = [[1] + [3 + len(w) for w in t.split()] + [2] for t in texts]
        n = max(len(r) for r in rows)
        ids = torch.tensor([r + [0] * (n - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}


class _Encoder(nn.Module):
    """An embedding table posing as a Hugging Face encoder (``last_hidden_state``, ``hidden_states``)."""

    config = SimpleNamespace(hidden_size=8, max_position_embeddings=32, num_hidden_layers=1)

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.layer = nn.Linear(8, 8)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                output_hidden_states: bool = False) -> SimpleNamespace:
        h0 = self.emb(input_ids)
        h1 = torch.tanh(self.layer(h0))
        return SimpleNamespace(last_hidden_state=h1, hidden_states=(h0, h1) if output_hidden_states else None)


def tiny_text_classifier(num_classes: int = 2, seed: int = 0) -> nn.Module:
    """A TextClassifier over a one-layer toy encoder and tokenizer (no Hugging Face download), seeded."""
    from nnforge.models.text import TextClassifier

    torch.manual_seed(seed)
    return TextClassifier(_Encoder(), _Tokenizer(), num_classes=num_classes)


class EmbConvNet(nn.Module):
    """Every layer type quantization packs: an embedding, a linear, a conv and a linear head (ids (B, T) -> (B, 8))."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(100, 64)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(64, 64), nn.Linear(64 * 4, 8)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc1(self.emb(ids)))  # (B, T, 64)
        return self.fc2(self.conv(h[:, None]).mean(2).flatten(1))  # conv: (B, 4, T, 64)


class Tiny(nn.Module):
    """The conformance tests' model: Embedding → LayerNorm → Linear → Linear, plus a Conv1d that no
    weight-only or pruning method handles (it must be reported as skipped, as must the LayerNorm)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(40, 64)
        self.norm = nn.LayerNorm(64)
        self.fc1 = nn.Linear(64, 128)
        self.fc2 = nn.Linear(128, 32)
        self.conv = nn.Conv1d(4, 4, 1)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(self.norm(self.emb(ids)))))  # (B, T, 32)


class TinyMoE(Tiny):
    """:class:`Tiny` with a mixture-of-experts layer after ``fc2`` (4 experts, top-2, a residual around it), so that
    every quantization and pruning method is checked on experts too, and expert removal has experts to remove."""

    def __init__(self) -> None:
        from nnforge.moe import MoE, MoEConfig

        super().__init__()
        self.moe = MoE(32, MoEConfig(num_experts=4, hidden=64, router_options={"k": 2}, balance="none"))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = super().forward(ids)
        return x + self.moe(x)


def conformance_model(seed: int = 0) -> TinyMoE:
    torch.manual_seed(seed)
    return TinyMoE()


def conformance_ids(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 40, (batch, 3), generator=torch.Generator().manual_seed(seed))
