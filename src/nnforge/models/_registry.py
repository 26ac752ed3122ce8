"""The registry of model architectures that recipes and safetensors checkpoints may name.

An architecture is a factory ``build(**options) -> nn.Module``. A checkpoint on disk names its
architecture and options in its safetensors metadata; loading looks the name up here, so a file can
never name arbitrary code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from nnforge.registry import Registry

__all__ = ["ARCHITECTURES", "DATA_KINDS", "build"]

ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry("architecture")
DATA_KINDS: dict[str, str] = {}
"""The kind of dataset (``char-lm``, ``array-classification``, …) each architecture trains on, so that a recipe
pairing a model with data it cannot read is refused before it runs."""


def build(name: str, **options: Any) -> nn.Module:
    """Build the registered architecture ``name`` with ``options``."""
    factory = ARCHITECTURES.get(name, where="model.architecture")
    return factory(**options)
