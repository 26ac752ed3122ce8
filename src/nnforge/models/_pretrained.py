"""Packaged pretrained models that load offline, by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nnforge.registry import Registry

__all__ = ["PRETRAINED"]

PRETRAINED: Registry[Callable[..., Any]] = Registry("pretrained model")


@PRETRAINED.register("minilm")
def _minilm(num_classes: int = 2, max_length: int = 128, seed: int = 0) -> Any:
    from nnforge.models.text import load_minilm

    return load_minilm(num_classes=num_classes, max_length=max_length, seed=seed)
