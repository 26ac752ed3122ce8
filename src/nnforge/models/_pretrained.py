"""Packaged pretrained models that load offline, by name."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from nnforge.errors import ConfigError
from nnforge.registry import Registry

__all__ = ["PRETRAINED", "check_options"]

PRETRAINED: Registry[Callable[..., Any]] = Registry("pretrained model")


def check_options(factory: Callable[..., Any], options: Mapping[str, Any], what: str,
                  fixed: tuple[str, ...] = ("num_classes",)) -> None:
    """A ``ConfigError`` naming the allowed options when ``options`` holds one ``factory`` does not take.

    ``fixed`` are the arguments the caller sets itself (the head size, from the dataset in a recipe).
    """
    params = inspect.signature(factory).parameters
    allowed = [n for n, p in params.items() if n not in fixed and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    clash = sorted(set(options) & set(fixed))
    if clash:
        raise ConfigError(f"{what}: {clash} cannot be given as an option (it is set from the data or the call); "
                          f"its options are {allowed}")
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"{what} has no option {', '.join(map(repr, unknown))}; its options are {allowed}")


@PRETRAINED.register("minilm")
def _minilm(num_classes: int = 2, max_length: int = 128, seed: int = 0) -> Any:
    from nnforge.models.text import load_minilm

    return load_minilm(num_classes=num_classes, max_length=max_length, seed=seed)
