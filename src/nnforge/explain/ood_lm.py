"""``token-ngram``: the surprise of a token n-gram language model fitted on in-distribution text.

Feature-space detectors miss shifts that keep the topic but change the wording (Shakespeare's poems
against his plays): a language model of the training text notices the unusual words and word pairs.
This one is the classic interpolated Witten-Bell n-gram model (Witten & Bell 1991; Chen & Goodman 1999)
over a tokenizer's ids — seconds to fit, exact to save as safetensors (sorted n-gram keys and counts).

    from nnforge.explain import build_detector
    det = build_detector("token-ngram", order=3).fit(tokens=train_ids)   # (N, T) int64, -1 = padding
    scores = det.score(tokens=new_ids)     # mean negative log-likelihood per token, in nats: higher = more OOD

Each sequence is scored on its own (``order - 1`` start markers before it); texts without tokens score 0.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from nnforge.config import Config
from nnforge.errors import ConfigError, DataError
from nnforge.explain.ood import OOD_DETECTORS, OODDetector

__all__ = ["TokenNgram"]


class _NgramParams(Config):
    order: int = Field(3, ge=1, le=6, description="n of the n-gram model")
    vocab_size: int | None = Field(None, ge=1, description="size of the token vocabulary; None: largest id + 1")


def _stream(tokens: torch.Tensor, order: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate rows as ``order - 1`` start markers (0) + ids shifted by 1 (ids >= ``vocab`` become
    ``vocab + 1``, a symbol never seen in training); return the stream, the positions of real tokens in
    it, and the row each of them belongs to."""
    valid = tokens >= 0  # (N, T)
    per_row = valid.sum(1)  # (N,)
    span = per_row + (order - 1)
    starts = torch.cumsum(span, 0) - span  # where each row's markers begin
    rank = torch.cumsum(valid.long(), 1) - 1  # index of each valid token within its row
    rows = torch.arange(tokens.shape[0]).unsqueeze(1).expand_as(tokens)[valid]
    positions = starts[rows] + (order - 1) + rank[valid]
    stream = torch.zeros(int(span.sum()), dtype=torch.long)
    stream[positions] = tokens[valid].clamp_max(vocab) + 1
    return stream, positions, rows


def _keys(stream: torch.Tensor, positions: torch.Tensor, k: int, base: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer keys of the k-grams ending at ``positions`` and of their (k-1)-token contexts."""
    context = torch.zeros_like(positions)
    for j in range(k - 1, 0, -1):  # the most distant token is the most significant digit
        context = context * base + stream[positions - j]
    return context * base + stream[positions], context


def _lookup(sorted_keys: torch.Tensor, values: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """``values`` at ``queries`` in ``sorted_keys``, 0 where a query is absent."""
    if sorted_keys.numel() == 0:
        return torch.zeros_like(queries)
    idx = torch.searchsorted(sorted_keys, queries).clamp_max(sorted_keys.numel() - 1)
    return torch.where(sorted_keys[idx] == queries, values[idx], torch.zeros_like(queries))


@OOD_DETECTORS.register("token-ngram")
class TokenNgram(OODDetector):
    """Mean per-token negative log-likelihood under an interpolated Witten-Bell n-gram model."""

    name = "token-ngram"
    inputs = ("tokens",)
    Params = _NgramParams
    params: _NgramParams

    def _base(self) -> int:
        return int(self._state["vocab_size"]) + 2  # 0 = start marker, ids shifted by one, then "unknown"

    def _fit(self, x: dict[str, torch.Tensor], labels: torch.Tensor | None) -> None:
        tokens, order = x["tokens"], self.params.order
        if not bool((tokens >= 0).any()):
            raise DataError("token-ngram.fit: the training tokens hold no ids (everything is padding)")
        vocab = self.params.vocab_size or int(tokens.max()) + 1
        if int(tokens.max()) >= vocab:
            raise DataError(f"token-ngram.fit: token id {int(tokens.max())} is not below vocab_size={vocab}")
        if (vocab + 2) ** order >= 2**62:
            raise ConfigError(f"token-ngram: order={order} with a vocabulary of {vocab} overflows 64-bit n-gram keys; "
                              "use a smaller order")
        self._state = {"vocab_size": torch.tensor(vocab)}
        stream, positions, _ = _stream(tokens, order, vocab)
        base = self._base()
        for k in range(1, order + 1):
            keys, contexts = _keys(stream, positions, k, base)
            uniq, counts = torch.unique(keys, return_counts=True)  # sorted
            ctx, ctx_counts = torch.unique(contexts, return_counts=True)
            _, types = torch.unique(uniq // base, return_counts=True)  # distinct followers of each context (sorted)
            self._state.update({f"keys{k}": uniq, f"counts{k}": counts, f"contexts{k}": ctx,
                                f"context_counts{k}": ctx_counts, f"context_types{k}": types})

    def _score(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens, order, s = x["tokens"], self.params.order, self._state
        stream, positions, rows = _stream(tokens, order, int(s["vocab_size"]))
        base = self._base()
        prob = torch.full(positions.shape, 1.0 / float(s["vocab_size"]), dtype=torch.float64)
        for k in range(1, order + 1):
            keys, contexts = _keys(stream, positions, k, base)
            count = _lookup(s[f"keys{k}"], s[f"counts{k}"], keys).double()
            total = _lookup(s[f"contexts{k}"], s[f"context_counts{k}"], contexts).double()
            types = _lookup(s[f"contexts{k}"], s[f"context_types{k}"], contexts).double()
            seen = total > 0
            prob = torch.where(seen, (count + types * prob) / (total + types).clamp_min(1), prob)
        nll = -torch.log(prob)
        sums = torch.zeros(tokens.shape[0], dtype=torch.float64).index_add_(0, rows, nll)
        n = torch.bincount(rows, minlength=tokens.shape[0]).double()
        # a row with no tokens (an empty text, or one of unknown symbols only, which featurizers drop) carries no
        # evidence of being in-distribution: +inf, so a guard flags it (a mean over nothing was 0, the most typical)
        return torch.where(n > 0, sums / n.clamp_min(1), torch.full_like(sums, math.inf))
