"""What the methods share: the explained output as a function, and reducing embedding attributions to units."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["output_fn", "per_unit"]


def output_fn(subject: Any, config: Any) -> Callable[..., torch.Tensor]:
    """The subject's forward returning logits, or softmax probabilities when ``config.output`` says so."""
    if config.output == "logit":
        return subject.forward  # type: ignore[no-any-return]

    def probabilities(*args: Any) -> torch.Tensor:
        return torch.softmax(subject.forward(*args), dim=-1)

    return probabilities


def per_unit(attr: torch.Tensor | tuple[torch.Tensor, ...], subject: Any) -> torch.Tensor:
    """One score per unit of one example: embedding attributions summed over the embedding width (tokens),
    input attributions flattened (pixels, features); units that are not input (padding, [CLS]) get 0."""
    a = attr[0] if isinstance(attr, tuple) else attr
    a = a.detach().float()[0]
    scores = a.sum(-1) if subject.embedding is not None and a.ndim == 2 else a.reshape(-1)
    return scores * subject.real[0].to(scores.dtype)
