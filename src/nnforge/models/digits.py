"""Reference models for scikit-learn's ``digits`` (8×8 grayscale images, 10 classes).

Two small architectures, registered in :data:`~nnforge.models.ARCHITECTURES`:

- ``"digits-mlp"``: flatten → [Linear → ReLU → Dropout] × len(hidden) → Linear. Takes (B, 64) or (B, 1, 8, 8).
- ``"digits-cnn"``: two 3×3 conv blocks (BatchNorm, or GroupNorm with ``norm="group"``) → 2×2 max-pool → MLP head. Takes (B, 1, 8, 8) (or (B, 64), reshaped).

Pixels are expected in [0, 1] (sklearn's values / 16). Build with ``nnforge.models.build("digits-cnn")``;
train with ``nnforge.train.fit`` (see ``docs/train.md``).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field, PositiveInt
from torch import nn

from nnforge.config import Config, config_type
from nnforge.models._registry import ARCHITECTURES, DATA_KINDS

__all__ = ["DigitsMLPConfig", "DigitsCNNConfig", "DigitsMLP", "DigitsCNN"]

IMAGE_SIZE = 8
NUM_CLASSES = 10


@config_type("model.digits-mlp")
class DigitsMLPConfig(Config):
    """Options of :class:`DigitsMLP`."""

    hidden: tuple[PositiveInt, ...] = Field((128, 64), min_length=1, description="widths of the hidden layers")
    dropout: float = Field(0.1, ge=0, lt=1)
    num_classes: int = Field(NUM_CLASSES, ge=2)


@config_type("model.digits-cnn")
class DigitsCNNConfig(Config):
    """Options of :class:`DigitsCNN`."""

    channels: tuple[PositiveInt, PositiveInt] = Field((16, 32), description="output channels of the two conv blocks")
    hidden: int = Field(64, ge=1, description="width of the head's hidden layer")
    dropout: float = Field(0.1, ge=0, lt=1)
    num_classes: int = Field(NUM_CLASSES, ge=2)
    norm: Literal["batch", "group"] = Field("batch", description="batch: BatchNorm; group: GroupNorm (4 groups), "
                                            "which DP-SGD needs (per-sample gradients)")


def _norm(kind: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(min(4, channels), channels)


def _as_images(x: torch.Tensor) -> torch.Tensor:
    """(B, 64) or (B, 1, 8, 8) → (B, 1, 8, 8)."""
    return x.reshape(x.shape[0], 1, IMAGE_SIZE, IMAGE_SIZE)


class DigitsMLP(nn.Module):
    """A multi-layer perceptron over the 64 pixels."""

    def __init__(self, config: DigitsMLPConfig | None = None) -> None:
        super().__init__()
        self.config = config or DigitsMLPConfig()
        layers: list[nn.Module] = []
        width = IMAGE_SIZE * IMAGE_SIZE
        for h in self.config.hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(self.config.dropout)]
            width = h
        layers.append(nn.Linear(width, self.config.num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(x.shape[0], -1))  # (B, 64) → (B, C)


class DigitsCNN(nn.Module):
    """A small convolutional network: (B, 1, 8, 8) → (B, C)."""

    def __init__(self, config: DigitsCNNConfig | None = None) -> None:
        super().__init__()
        self.config = config or DigitsCNNConfig()
        c1, c2 = self.config.channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 3, padding=1), _norm(self.config.norm, c1), nn.ReLU(),   # (B, c1, 8, 8)
            nn.Conv2d(c1, c2, 3, padding=1), _norm(self.config.norm, c2), nn.ReLU(),  # (B, c2, 8, 8)
            nn.MaxPool2d(2),                                                 # (B, c2, 4, 4)
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(self.config.dropout),
            nn.Linear(c2 * (IMAGE_SIZE // 2) ** 2, self.config.hidden), nn.ReLU(),
            nn.Linear(self.config.hidden, self.config.num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(_as_images(x)))  # (B, C)


@ARCHITECTURES.register("digits-mlp")
def build_digits_mlp(**options: Any) -> nn.Module:
    """Build a :class:`DigitsMLP`; options are :class:`DigitsMLPConfig` fields (validated)."""
    return DigitsMLP(DigitsMLPConfig(**options))


@ARCHITECTURES.register("digits-cnn")
def build_digits_cnn(**options: Any) -> nn.Module:
    """Build a :class:`DigitsCNN`; options are :class:`DigitsCNNConfig` fields (validated)."""
    return DigitsCNN(DigitsCNNConfig(**options))

DATA_KINDS.update({"digits-mlp": "array-classification", "digits-cnn": "array-classification"})
