"""What the lenses show: per-layer losses on validation batches (:func:`lens_report`) and per-layer top
next-character predictions for one text (:func:`lens_predictions`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnforge.errors import DataError
from nnforge.explain.lens._lens import TunedLens, _ids, lens_logits, residual_stream

__all__ = ["LayerLens", "LensReport", "LensPredictions", "lens_report", "lens_predictions"]


@dataclass(frozen=True)
class LayerLens:
    """One layer read through the lenses (means over tokens, in nats; agreement: the lens's top token is the
    model's own top token, a fraction of tokens). The tuned-lens figures are None without a tuned lens."""

    layer: int
    logit_lens_loss: float
    logit_lens_kl: float
    logit_lens_agreement: float
    tuned_lens_loss: float | None = None
    tuned_lens_kl: float | None = None
    tuned_lens_agreement: float | None = None


@dataclass(frozen=True)
class LensReport:
    """Per-layer cross-entropy against the next tokens and KL divergence from the model's final distribution."""

    tokens: int
    model_loss: float
    layers: list[LayerLens]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LensPredictions:
    """The top next-token guesses of every layer at every position of ``text``.

    ``top[layer][position]`` is a list of ``(token, probability)``, most likely first; ``lens`` is ``"logit"``
    or ``"tuned"``; the last layer's guesses are the model's own.
    """

    text: str
    lens: str
    top: list[list[list[tuple[str, float]]]]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "lens": self.lens,
                "top": [[[[tok, p] for tok, p in pos] for pos in layer] for layer in self.top]}

    def table(self, position: int = -1) -> str:
        """One line per layer: its guesses after ``text[:position + 1]`` (default: after the whole text)."""
        lines = []
        for layer, guesses in enumerate(self.top):
            shown = "  ".join(f"{tok!r} {p:.2f}" for tok, p in guesses[position])
            lines.append(f"layer {layer}: {shown}")
        return "\n".join(lines)


def _kl(final_log: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(final ‖ lens) per token: (B, T, V) log-probabilities and logits → (B, T)."""
    return (final_log.exp() * (final_log - F.log_softmax(logits.float(), -1))).sum(-1)


@torch.no_grad()
def lens_report(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                tuned: TunedLens | None = None) -> LensReport:
    """Per-layer loss, KL to the final distribution and top-1 agreement, over ``(x, y)`` validation batches.

    Raises:
        DataError: no batches. ModelError: not a model with the char-GPT's layout.
    """
    sums: dict[str, list[float]] = {}
    tokens, model_loss = 0, 0.0
    for batch in batches:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise DataError("lens_report reads (x, y) batches: token ids and the next tokens")
        x, y = _ids(batch), batch[1]
        stream, final = residual_stream(model, x)
        y = y.to(final.device).reshape(-1)
        final_log = F.log_softmax(final.float(), -1)
        top = final.argmax(-1)
        n = y.numel()
        tokens += n
        model_loss += float(F.cross_entropy(final.reshape(n, -1).float(), y, reduction="sum"))
        for kind, lens in (("logit", None), ("tuned", tuned)):
            if kind == "tuned" and lens is None:
                continue
            for layer, logits in enumerate(lens_logits(model, stream, lens)):
                row = sums.setdefault(f"{kind}{layer}", [0.0, 0.0, 0.0])
                row[0] += float(F.cross_entropy(logits.reshape(n, -1).float(), y, reduction="sum"))
                row[1] += float(_kl(final_log, logits).sum())
                row[2] += float((logits.argmax(-1) == top).sum())
    if tokens == 0:
        raise DataError("lens_report got no batches")
    layers = []
    for layer in range(len(sums) // (2 if tuned is not None else 1)):
        lo = [v / tokens for v in sums[f"logit{layer}"]]
        tu = [v / tokens for v in sums[f"tuned{layer}"]] if tuned is not None else [None, None, None]
        layers.append(LayerLens(layer, lo[0], lo[1], lo[2], tu[0], tu[1], tu[2]))
    return LensReport(tokens, model_loss / tokens, layers)


@torch.no_grad()
def lens_predictions(model: nn.Module, text: str, *, encode: Callable[[str], torch.Tensor | Sequence[int]],
                     decode: Callable[[list[int]], str], tuned: TunedLens | None = None,
                     top_k: int = 3) -> LensPredictions:
    """Every layer's ``top_k`` next-token guesses, with probabilities, at every position of ``text``.

    Args:
        encode: text → token ids (a char corpus's ``encode``). decode: ids → text (its ``decode``).
        tuned: read through this tuned lens; None: the logit lens.

    Raises:
        DataError: empty text, or ``top_k`` < 1.
    """
    if not text:
        raise DataError("lens_predictions needs a non-empty text")
    if top_k < 1:
        raise DataError(f"top_k must be >= 1; got {top_k}")
    ids = torch.as_tensor(encode(text), dtype=torch.long).reshape(1, -1)
    stream, _ = residual_stream(model, ids)
    top: list[list[list[tuple[str, float]]]] = []
    for logits in lens_logits(model, stream, tuned):
        probs, which = F.softmax(logits[0].float(), -1).topk(top_k, -1)  # (T, k)
        top.append([[(decode([int(i)]), float(p)) for p, i in zip(ps, ws, strict=True)]
                    for ps, ws in zip(probs.tolist(), which.tolist(), strict=True)])
    return LensPredictions(text, "tuned" if tuned is not None else "logit", top)
