"""Evaluating a trained SAE on held-out batches: :func:`evaluate_sae`.

Per batch, the model runs twice (in eval mode, without gradients): once as it is, recording the activations at
the site, and once with the SAE's reconstruction spliced in place of them. From that come the loss with and
without the SAE and the KL divergence between the two output distributions; from the recorded activations the
reconstruction error (FVU), the mean number of active latents (L0), which latents fire at all (alive), and the
tokens on which each of the most used latents fires hardest (its max-activating examples, with their context).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from nnforge.errors import ConfigError, DataError, ModelError
from nnforge.explain.sae._module import SAE
from nnforge.explain.sae._sites import (
    Batch,
    batch_loss,
    batch_mask,
    batch_tokens,
    capture,
    replace_activations,
    resolve_site,
    run_batch,
)
from nnforge.models.text import eval_mode

__all__ = ["FeatureExample", "FeatureSummary", "SAEEvaluation", "evaluate_sae", "reconstruction_error"]


@dataclass(frozen=True)
class FeatureExample:
    """One token on which a latent fires: the text before it, the token itself and the text after it."""

    activation: float
    before: str
    token: str
    after: str

    def __str__(self) -> str:
        return f"{self.before}[{self.token}]{self.after}"


@dataclass(frozen=True)
class FeatureSummary:
    """One latent: how often it fires (a fraction of tokens), how strongly, and its max-activating examples."""

    index: int
    frequency: float
    mean_activation: float
    max_activation: float
    examples: list[FeatureExample] = field(default_factory=list)


@dataclass(frozen=True)
class SAEEvaluation:
    """An SAE measured on held-out batches (see :func:`evaluate_sae`).

    ``fvu``: fraction of variance unexplained, ``sum ||x - x̂||² / sum ||x - mean||²``; ``relative_mse``:
    ``sum ||x - x̂||² / sum ||x||²``; ``l0``: mean active latents per token; ``alive``: latents that fire on at
    least one of the first ``alive_tokens`` tokens; ``loss_increase``: ``val_loss_with_sae / val_loss - 1``;
    ``kl_with_sae``: mean KL(model ‖ model with the SAE spliced in) per output position, in nats.
    """

    site: str
    tokens: int
    batches: int
    d_sae: int
    fvu: float
    relative_mse: float
    l0: float
    alive: int
    dead: int
    alive_tokens: int
    val_loss: float | None
    val_loss_with_sae: float | None
    kl_with_sae: float
    features: list[FeatureSummary] = field(default_factory=list)

    @property
    def alive_fraction(self) -> float:
        return self.alive / self.d_sae

    @property
    def loss_increase(self) -> float | None:
        """Relative increase of the loss when the SAE replaces the activations (0.05: 5% higher)."""
        if self.val_loss is None or self.val_loss_with_sae is None:
            return None
        return self.val_loss_with_sae / self.val_loss - 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values (the derived ``alive_fraction`` and ``loss_increase`` included)."""
        return {**asdict(self), "alive_fraction": self.alive_fraction, "loss_increase": self.loss_increase}


@torch.no_grad()
def reconstruction_error(sae: SAE, activations: torch.Tensor) -> dict[str, float]:
    """``{"fvu", "relative_mse", "l0"}`` of ``sae`` on ``(N, d)`` activations (see :class:`SAEEvaluation`),
    computed in chunks (the dense codes of a million tokens would not fit in memory)."""
    x = activations.reshape(-1, activations.shape[-1])
    tally = _Tally(sae.d_sae, sae.d_in, keep=0, alive_tokens=None)
    for chunk in x.split(16_384):
        chunk = chunk.float()
        codes = sae.encode(chunk)
        tally.add(chunk, sae.decode(codes), codes)
    return {"fvu": tally.fvu(), "relative_mse": tally.err / max(tally.sq, 1e-30), "l0": tally.active / max(tally.n, 1)}


def _default_decode(ids: list[int]) -> str:
    return " ".join(str(i) for i in ids)


class _Tally:
    """Running sums over the evaluated tokens, and each latent's strongest tokens so far."""

    def __init__(self, d_sae: int, d_in: int, keep: int, alive_tokens: int | None) -> None:
        self.n, self.keep, self.alive_budget = 0, keep, alive_tokens
        self.err = self.sq = self.active = 0.0
        self.sum = torch.zeros(d_in, dtype=torch.float64)
        self.fired = torch.zeros(d_sae, dtype=torch.long)
        self.alive_fired = torch.zeros(d_sae, dtype=torch.long)
        self.alive_seen = 0
        self.mass = torch.zeros(d_sae, dtype=torch.float64)
        self.peak = torch.full((0, d_sae), float("-inf"))  # (≤ keep, d_sae) strongest activations per latent
        self.where = torch.zeros((0, d_sae), dtype=torch.long)  # their global token numbers

    def add(self, x: torch.Tensor, x_hat: torch.Tensor, codes: torch.Tensor) -> None:
        x, x_hat, codes = x.double().cpu(), x_hat.double().cpu(), codes.float().cpu()  # (n, d_in), (n, d_sae)
        on = codes > 0
        self.err += float((x - x_hat).pow(2).sum())
        self.sq += float(x.pow(2).sum())
        self.sum += x.sum(0)
        self.active += float(on.sum())
        self.fired += on.sum(0)
        self.mass += codes.double().sum(0)
        if self.alive_budget is None or self.alive_seen < self.alive_budget:
            take = len(x) if self.alive_budget is None else min(len(x), self.alive_budget - self.alive_seen)
            self.alive_fired += on[:take].sum(0)
            self.alive_seen += take
        if self.keep:
            values, idx = codes.topk(min(self.keep, len(codes)), dim=0)  # (m, d_sae)
            peak = torch.cat([self.peak, values])
            where = torch.cat([self.where, idx + self.n])
            order = peak.topk(min(self.keep, len(peak)), dim=0).indices
            self.peak, self.where = peak.gather(0, order), where.gather(0, order)
        self.n += len(x)

    def fvu(self) -> float:
        total = self.sq - float(self.sum.pow(2).sum()) / max(self.n, 1)
        return self.err / max(total, 1e-30)


def _examples(tally: _Tally, latent: int, positions: list[tuple[int, int, int]],
              tokens: list[tuple[torch.Tensor | None, torch.Tensor | None]], decode: Callable[[list[int]], str],
              context: int) -> list[FeatureExample]:
    out = []
    for value, where in zip(tally.peak[:, latent].tolist(), tally.where[:, latent].tolist(), strict=True):
        if value <= 0:
            break
        b, row, col = positions[where]
        ids, mask = tokens[b]
        if ids is None:
            out.append(FeatureExample(value, "", f"#{row}:{col}", ""))
            continue
        line = ids[row].tolist()
        real = mask[row].tolist() if mask is not None else [True] * len(line)  # padding is never shown
        before = [t for t, r in zip(line[max(0, col - context) : col], real[max(0, col - context) : col],
                                    strict=True) if r]
        after = [t for t, r in zip(line[col + 1 : col + 1 + context // 4], real[col + 1 : col + 1 + context // 4],
                                   strict=True) if r]
        out.append(FeatureExample(value, decode(before), decode([line[col]]), decode(after)))
    return out


def _kl(logits: torch.Tensor, spliced: torch.Tensor, mask: torch.Tensor | None) -> tuple[float, int]:
    """Sum of KL(p ‖ q) over output positions (real ones only for per-token outputs) and their count."""
    p_log = F.log_softmax(logits.float(), -1)
    kl = (p_log.exp() * (p_log - F.log_softmax(spliced.float(), -1))).sum(-1)  # (B, T) or (B,)
    if mask is not None and kl.shape == mask.shape:
        kl = kl[mask.to(kl.device)]
    return float(kl.sum()), kl.numel()


@torch.no_grad()
def evaluate_sae(sae: SAE, model: nn.Module, batches: Iterable[Batch], *, site: str,
                 alive_tokens: int | None = None, top_features: int = 8, examples: int = 5,
                 decode: Callable[[list[int]], str] | None = None, context: int = 24) -> SAEEvaluation:
    """Measure ``sae`` at ``site`` of ``model`` over held-out ``batches``.

    Args:
        sae: a trained SAE whose width matches the site's.
        model: the model the SAE was trained on (left as it was: hooks are removed, training flags restored).
        batches: ``(x, y)`` pairs or mappings of keyword inputs (see :mod:`nnforge.explain.sae`); the loss needs
            targets (``y`` or ``labels``), and is None without them.
        site: ``"residual.<i>"`` or a module name.
        alive_tokens: count a latent alive if it fires on at least one of the first ``alive_tokens`` tokens
            (None: all of them).
        top_features: how many latents to describe (those with the largest total activation).
        examples: max-activating examples per described latent.
        decode: token ids → text (a char corpus's ``decode``, a tokenizer's ``decode``); None shows the ids.
        context: tokens of context shown before each example (a quarter of it after).

    Raises:
        ConfigError: unknown site, or negative counts. DataError: no batches.
        ModelError: the site's width is not the SAE's.
    """
    if min(top_features, examples, context) < 0 or (alive_tokens is not None and alive_tokens < 1):
        raise ConfigError("top_features, examples and context must be >= 0, and alive_tokens >= 1 (or None)")
    resolve_site(model, site)
    decode = decode or _default_decode
    tally = _Tally(sae.d_sae, sae.d_in, examples if top_features else 0, alive_tokens)
    positions: list[tuple[int, int, int]] = []
    tokens: list[tuple[torch.Tensor | None, torch.Tensor | None]] = []  # ids and mask of every batch
    losses: list[float] = []
    spliced_losses: list[float] = []
    kl_sum, kl_n = 0.0, 0
    with eval_mode(model), eval_mode(sae):
        for b, batch in enumerate(batches):
            with capture(model, [site]) as seen:
                logits = run_batch(model, batch)
            acts = seen[site][0]  # (B, T, d)
            if acts.shape[-1] != sae.d_in:
                raise ModelError(f"site {site!r} of {type(model).__name__} has width {acts.shape[-1]}; this SAE "
                                 f"reads width {sae.d_in}")
            with replace_activations(model, site, sae):
                spliced = run_batch(model, batch)
            loss, loss_sae = batch_loss(logits, batch), batch_loss(spliced, batch)
            if loss is not None and loss_sae is not None:
                losses.append(float(loss))
                spliced_losses.append(float(loss_sae))
            mask = batch_mask(batch)
            kl, n = _kl(logits, spliced, mask)
            kl_sum, kl_n = kl_sum + kl, kl_n + n
            keep = mask.to(acts.device) if mask is not None else torch.ones(acts.shape[:-1], dtype=torch.bool,
                                                                            device=acts.device)
            x = acts[keep].float()  # (n, d)
            codes = sae.encode(x)
            tally.add(x, sae.decode(codes), codes)
            positions += [(b, int(r), int(c)) for r, c in keep.nonzero().tolist()]
            ids = batch_tokens(batch)
            tokens.append((ids.cpu() if ids is not None else None, mask.cpu() if mask is not None else None))
    if tally.n == 0:
        raise DataError("evaluate_sae got no batches (or only padding)")
    chosen = [i for i in tally.mass.argsort(descending=True).tolist() if tally.fired[i] > 0][:top_features]
    features = [FeatureSummary(i, int(tally.fired[i]) / tally.n, float(tally.mass[i]) / int(tally.fired[i]),
                               float(tally.peak[0, i]) if len(tally.peak) else 0.0,
                               _examples(tally, i, positions, tokens, decode, context)) for i in chosen]
    alive = int((tally.alive_fired > 0).sum())
    return SAEEvaluation(
        site=site, tokens=tally.n, batches=len(tokens), d_sae=sae.d_sae, fvu=tally.fvu(),
        relative_mse=tally.err / max(tally.sq, 1e-30), l0=tally.active / tally.n, alive=alive, dead=sae.d_sae - alive,
        alive_tokens=tally.alive_seen, val_loss=sum(losses) / len(losses) if losses else None,
        val_loss_with_sae=sum(spliced_losses) / len(spliced_losses) if spliced_losses else None,
        kl_with_sae=kl_sum / max(kl_n, 1), features=features)
