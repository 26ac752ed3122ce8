"""Per-layer pruning sensitivity: what each sparsity level costs one layer in error, kept weights, FLOPs and time."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nnforge.compress.prune.criteria import CRITERIA, Pattern, PruneJob
from nnforge.compress.prune.unstructured import weight_of
from nnforge.errors import ConfigError

__all__ = ["SparsityOption", "prune_sensitivity"]

LEVELS = (0.0, 0.25, 0.5, 0.625, 0.75, 0.875)


@dataclass
class SparsityOption:
    """One sparsity level for one layer, as measured.

    ``error``: the layer's relative output error ``||X Wᵀ − X Ŵᵀ||² / ||X Wᵀ||²`` on sampled calibration inputs,
    or, when measured with a ``loss_fn``, the increase of that loss with only this layer pruned. ``kept``: non-zero
    weights; ``flops``: multiply-adds of one forward of a calibration batch through the pruned layer if run
    sparse (kept weights x rows it sees); ``latency_ms``: as measured by the caller's ``latency_fn``.
    """

    sparsity: float
    error: float
    params: int
    kept: int
    flops: float
    latency_ms: float | None = None


def _loss_with(model: nn.Module, name: str, layer: nn.Module, weight: torch.Tensor,
               loss_fn: Callable[[nn.Module], float]) -> float:
    original = weight_of(layer).detach().clone()
    with torch.no_grad():
        weight_of(layer).copy_(weight.reshape(original.shape).to(original.dtype))
    try:
        return float(loss_fn(model))
    finally:
        with torch.no_grad():
            weight_of(layer).copy_(original)


def prune_sensitivity(model: nn.Module, calibration: Iterable[Any], *, levels: Sequence[float] = LEVELS,
                      criterion: str = "wanda", forward: Callable[[nn.Module, Any], Any] | None = None,
                      loss_fn: Callable[[nn.Module], float] | None = None, modules: Sequence[str] | None = None,
                      latency_fn: Callable[[nn.Module], float] | None = None,
                      damp: float = 0.01) -> dict[str, list[SparsityOption]]:
    """Measure every sparsity level of ``levels`` on every Linear layer (or those named in ``modules``).

    Each layer is pruned alone, by ``criterion``, on a copy of its weight; the model is left as it was. With
    ``loss_fn(model) -> loss`` the error is the loss increase (end to end, slower: one loss per layer and level);
    with ``latency_fn(layer) -> ms`` each option also gets the time of the layer with that level's weight (for
    a sparse kernel that is what a latency budget needs; dense weights full of zeros run as fast as dense).

    Returns ``{module name: [option per level]}`` for :func:`allocate_sparsity`.
    """
    from nnforge.compress.quantize.calibrate import collect_stats

    spec = CRITERIA.get(criterion, where="criterion")
    bad = [s for s in levels if isinstance(s, bool) or not isinstance(s, int | float) or not 0.0 <= s < 1.0]
    if isinstance(levels, str) or not list(levels) or bad:
        raise ConfigError(f"The 'levels' parameter must be a non-empty list of sparsities in [0, 1). Got {levels!r} instead.")
    names = list(modules) if modules is not None else [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError("prune_sensitivity found no nn.Linear layer to measure")
    batches = list(calibration)
    stats = collect_stats(model, batches, modules=names, forward=forward)
    base = float(loss_fn(model)) if loss_fn is not None else 0.0
    out: dict[str, list[SparsityOption]] = {}
    for name in names:
        layer = model.get_submodule(name)
        w = weight_of(layer).detach().float().cpu().clone()
        x = stats[name].sample
        ref = x @ w.T
        rows = stats[name].n / max(1, len(batches))
        options = []
        for level in sorted(set(float(s) for s in levels)):
            pruned = w if level == 0.0 else spec.prune(PruneJob(w.clone(), Pattern(level, compare=spec.compare),
                                                                stats[name], {"damp": damp}))
            if loss_fn is not None:
                error = _loss_with(model, name, layer, pruned, loss_fn) - base
            else:
                error = float((ref - x @ pruned.T).square().sum() / ref.square().sum().clamp_min(1e-30))
            kept = int((pruned != 0).sum())
            options.append(SparsityOption(level, error, w.numel(), kept, kept * rows))
            if latency_fn is not None:
                options[-1].latency_ms = _latency(layer, pruned, latency_fn)
        out[name] = options
    return out


def _latency(layer: nn.Module, weight: torch.Tensor, latency_fn: Callable[[nn.Module], float]) -> float:
    """``latency_fn`` of a copy of ``layer`` holding ``weight`` (the model is not touched)."""
    probe = copy.deepcopy(layer)
    with torch.no_grad():
        weight_of(probe).copy_(weight.reshape(weight_of(probe).shape).to(weight_of(probe).dtype))
    return float(latency_fn(probe))
