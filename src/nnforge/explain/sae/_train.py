"""Training a sparse autoencoder on activations: :func:`train_sae`.

    sae, report = train_sae(activations, SAEConfig(k=32))                        # (N, d) tensor
    sae, report = train_sae(model, SAEConfig(k=32), batches=train_batches, site="residual.2")

The loop, per step: draw ``batch_size`` tokens (a fresh shuffle each epoch) → normalise → encode → decode →
loss = fraction of variance unexplained + the architecture's terms (AuxK, L1) → Adam step (the decoder's
gradient along its own rows removed, then its rows put back at unit norm) → note which latents fired.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from nnforge.errors import ConfigError, DataError
from nnforge.explain.sae._config import SAEConfig
from nnforge.explain.sae._module import SAE
from nnforge.explain.sae._registry import fraction_unexplained
from nnforge.explain.sae._sites import Batch, collect_activations

__all__ = ["SAEReport", "train_sae"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SAEReport:
    """What :func:`train_sae` did and how well the SAE fits its training activations.

    ``fvu`` and ``l0`` are means over the last tenth of the steps (training batches); ``dead`` counts the
    latents that did not fire during the last ``dead_after_tokens`` training tokens. ``curve`` holds about 20
    points of the loss terms. Held-out figures come from :func:`~nnforge.explain.evaluate_sae`.
    """

    config: dict[str, Any]
    site: str | None
    d_in: int
    d_sae: int
    tokens: int
    steps: int
    epochs: float
    seconds: float
    scale: float
    fvu: float
    l0: float
    dead: int
    curve: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values, for reports and the ledger."""
        return asdict(self)


def _activations(source: torch.Tensor | nn.Module, batches: Iterable[Batch] | None, site: str | None,
                 max_tokens: int | None) -> torch.Tensor:
    if isinstance(source, nn.Module):
        if batches is None or site is None:
            raise ConfigError("train_sae(model, ...) needs batches= (the model's inputs) and site= (e.g. "
                              "'residual.2') to collect activations")
        return collect_activations(source, batches, site, max_tokens=max_tokens)
    if not isinstance(source, torch.Tensor):
        raise ConfigError(f"train_sae trains on an (N, d) tensor of activations or on a model with batches and a "
                          f"site; got {type(source).__name__}")
    if batches is not None or site is not None:
        raise ConfigError("batches= and site= are for train_sae(model, ...); a tensor of activations needs neither")
    if source.dim() < 2 or not source.is_floating_point() or source.numel() == 0:
        raise DataError(f"activations must be a non-empty float tensor of shape (tokens, width) or (..., width); "
                        f"got {source.dtype} of shape {tuple(source.shape)}")
    acts = source.detach().reshape(-1, source.shape[-1])
    return acts[:max_tokens] if max_tokens is not None else acts


def _lr_factor(step: int, config: SAEConfig) -> float:
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


@torch.no_grad()
def _initialise(sae: SAE, acts: torch.Tensor, gen: torch.Generator) -> None:
    """Set the input scale (mean squared norm → d_in) and the decoder bias (the mean) from a sample."""
    sample = acts[torch.randperm(len(acts), generator=gen)[:65_536].to(acts.device)].float()
    if sae.config.normalize:
        mean_sq = sample.pow(2).sum(-1).mean()
        if float(mean_sq) == 0.0:
            raise DataError("the activations are all zero; there is nothing for an SAE to learn")
        sae.scale.fill_(float((sae.d_in / mean_sq).sqrt()))
    sae.b_dec.copy_(sample.mean(0) * sae.scale)


def train_sae(source: torch.Tensor | nn.Module, config: SAEConfig | None = None, *,
              batches: Iterable[Batch] | None = None, site: str | None = None,
              max_tokens: int | None = None) -> tuple[SAE, SAEReport]:
    """Train a sparse autoencoder on activations, or on a model's activations at ``site`` over ``batches``.

    Args:
        source: an ``(N, d)`` tensor of activations, or a model.
        config: the SAE and its training (``SAEConfig()`` if None); ``d_in`` is taken from the data when unset.
        batches: the model's inputs (see :mod:`nnforge.explain.sae` for the batch forms); only with a model.
        site: ``"residual.<i>"`` or a module name; only with a model.
        max_tokens: use at most this many activations.

    Returns:
        The trained SAE (in eval mode, on the activations' device) and its :class:`SAEReport`.

    Raises:
        ConfigError: a model without batches/site, or ``config.d_in`` different from the activations' width.
        DataError: activations of the wrong shape, or none.
    """
    config = config or SAEConfig()
    acts = _activations(source, batches, site, max_tokens)
    width = int(acts.shape[-1])
    if config.d_in is not None and config.d_in != width:
        raise ConfigError(f"SAEConfig.d_in is {config.d_in} but the activations have width {width}; "
                          "leave d_in unset to take it from the data")
    config = SAEConfig(**{**config.model_dump(), "d_in": width})
    gen = torch.Generator().manual_seed(config.seed)
    sae = SAE(config).to(acts.device)
    _initialise(sae, acts, gen)
    arch = sae.architecture
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr, betas=(0.9, 0.999))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, config))
    silent = torch.zeros(sae.d_sae, dtype=torch.long, device=acts.device)  # tokens since each latent last fired
    batch_size = min(config.batch_size, len(acts))
    order, cursor = torch.randperm(len(acts), generator=gen).to(acts.device), 0
    curve: list[dict[str, float]] = []
    tail: list[tuple[float, float]] = []
    log_every = max(1, config.steps // 20)
    t0 = time.perf_counter()
    sae.train()
    for step in range(config.steps):
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(acts), generator=gen).to(acts.device), 0
        x = acts[order[cursor : cursor + batch_size]].float() * sae.scale  # (B, d_in), normalised
        cursor += batch_size
        pre = sae.pre_activations(x)  # (B, d_sae)
        codes = arch.activate(pre, config)
        x_hat = sae.decode_normalized(codes)  # (B, d_in)
        fvu = fraction_unexplained(x, x_hat)
        extra = arch.extra_loss(sae, x, x_hat, pre, codes, silent > config.dead_after_tokens)
        loss = fvu + sum(extra.values(), torch.zeros((), device=x.device))
        if not torch.isfinite(loss):
            raise DataError(f"SAE training diverged at step {step} (loss {float(loss)}); lower lr or check the "
                            "activations for inf/nan")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():  # only the rows' directions may change; their norm is fixed at 1
            w, g = sae.W_dec, sae.W_dec.grad
            if g is not None:
                g -= (g * w).sum(-1, keepdim=True) * w
        optimizer.step()
        schedule.step()
        sae.normalize_decoder()
        with torch.no_grad():
            silent += len(x)
            silent[codes.fired(sae.d_sae)] = 0
            l0 = float(codes.active().float().mean())
        fvu_value = float(fvu.detach())
        if step >= config.steps - max(1, config.steps // 10):
            tail.append((fvu_value, l0))
        if step % log_every == 0 or step == config.steps - 1:
            point = {"step": float(step), "fvu": fvu_value, "l0": l0, **{k: float(v.detach()) for k, v in extra.items()}}
            curve.append(point)
            log.info("sae step %d: fvu %.4f, l0 %.1f", step, fvu_value, l0)
    sae.eval()
    report = SAEReport(
        config=config.to_dict(), site=site, d_in=sae.d_in, d_sae=sae.d_sae, tokens=len(acts), steps=config.steps,
        epochs=config.steps * batch_size / len(acts), seconds=time.perf_counter() - t0, scale=float(sae.scale),
        fvu=sum(f for f, _ in tail) / len(tail), l0=sum(v for _, v in tail) / len(tail),
        dead=int((silent > config.dead_after_tokens).sum()), curve=curve)
    return sae, report
