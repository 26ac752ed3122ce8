"""Tiny seeded inputs and models shared by test files (importable because tests/ holds conftest.py)."""

from __future__ import annotations

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
