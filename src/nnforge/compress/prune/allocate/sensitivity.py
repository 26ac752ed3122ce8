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

__all__ = ["SparsityOption", "SparseExecution", "prune_sensitivity"]

LEVELS = (0.0, 0.25, 0.5, 0.625, 0.75, 0.875)


@dataclass
class SparsityOption:
    """One sparsity level for one layer, as measured.

    ``error``: the layer's relative output error ``||X Wᵀ − X Ŵᵀ||² / ||X Wᵀ||²`` on sampled calibration inputs,
    or, when measured with a ``loss_fn``, the increase of that loss with only this layer pruned. ``kept``: non-zero
    weights; ``flops``: multiply-adds of one forward of a calibration batch through the pruned layer if run
    sparse (kept weights x rows it sees); ``latency_ms``: as measured by the caller's ``latency_fn``, or with
    :class:`SparseExecution` the time of the layer as it would run (``execution`` says how, and why).
    """

    sparsity: float
    error: float
    params: int
    kept: int
    flops: float
    latency_ms: float | None = None
    execution: str | None = None


@dataclass(frozen=True)
class SparseExecution:
    """Time each level as the layer would run once stored sparse (:class:`~nnforge.compress.prune.sparse.SparsifyConfig`):
    its sparse kernel (``2:4`` where the zeros fit it, else ``csr``, fp32 values) is timed against the dense
    execution of the same arithmetic, interleaved, at ``batch_size`` rows, and the level costs what the layer's
    verdict would run: the dense time divided by the measured speed-up where the verdict is "faster", the dense
    time (the median over the layer's levels) everywhere else, including levels below ``min_sparsity``, which
    sparsify leaves dense. Zeros in a dense matrix save no time, so without this a latency budget could only be
    met by a caller's own ``latency_fn``.

    Args:
        batch_size: rows per call (1: a single request).
        repeats: interleaved timings per level (:meth:`SparseLinear.measure`).
        min_sparsity: below it a level runs dense without timing (as ``SparsifyConfig.min_sparsity``).
    """

    batch_size: int = 1
    repeats: int = 20
    min_sparsity: float = 0.5


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
                      sparse_execution: SparseExecution | None = None,
                      damp: float = 0.01) -> dict[str, list[SparsityOption]]:
    """Measure every sparsity level of ``levels`` on every Linear layer (or those named in ``modules``).

    Each layer is pruned alone, by ``criterion``, on a copy of its weight; the model is left as it was. With
    ``loss_fn(model) -> loss`` the error is the loss increase (end to end, slower: one loss per layer and level);
    with ``latency_fn(layer) -> ms`` each option also gets the time of the layer with that level's weight (for
    a sparse kernel that is what a latency budget needs; dense weights full of zeros run as fast as dense);
    with ``sparse_execution`` each option gets the time of the layer as sparsify would run it: its sparse kernel
    where that level's measured verdict says faster, dense elsewhere (:class:`SparseExecution`).

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
    if latency_fn is not None and sparse_execution is not None:
        raise ConfigError("prune_sensitivity: give latency_fn or sparse_execution, not both (each times the levels)")
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
        weights = []
        for level in sorted(set(float(s) for s in levels)):
            pruned = w if level == 0.0 else spec.prune(PruneJob(w.clone(), Pattern(level, compare=spec.compare),
                                                                stats[name], {"damp": damp}))
            if loss_fn is not None:
                error = _loss_with(model, name, layer, pruned, loss_fn) - base
            else:
                error = float((ref - x @ pruned.T).square().sum() / ref.square().sum().clamp_min(1e-30))
            kept = int((pruned != 0).sum())
            options.append(SparsityOption(level, error, w.numel(), kept, kept * rows))
            weights.append(pruned)
            if latency_fn is not None:
                options[-1].latency_ms = _latency(layer, pruned, latency_fn)
        if sparse_execution is not None:
            for option, (ms, how) in zip(options, _executed_times(weights, sparse_execution), strict=True):
                option.latency_ms, option.execution = ms, how
        out[name] = options
    return out


def _executed_times(weights: list[torch.Tensor], cfg: SparseExecution) -> list[tuple[float, str]]:
    """``(ms, how it runs)`` for one layer at each of its pruned ``weights`` (see :class:`SparseExecution`)."""
    from nnforge.compress.prune.kernels import sparsify_weight
    from nnforge.compress.prune.sparse import SparseLinear
    from nnforge.compress.prune.sparse.apply import is_2_4
    from nnforge.hardware import compare

    verdicts: dict[int, tuple[str, dict[str, Any]]] = {}
    for i, w in enumerate(weights):
        if float((w == 0).float().mean()) >= cfg.min_sparsity:
            fmt = "2:4" if is_2_4(w) else "csr"
            sparse = SparseLinear.from_sparse(sparsify_weight(w, fmt), batch_sizes=(cfg.batch_size,))
            verdicts[i] = fmt, sparse.measure(repeats=cfg.repeats)[cfg.batch_size]
    if verdicts:  # one dense time for the layer: the median of the dense sides of its comparisons
        dense_ms = float(torch.tensor([v["dense_ms"] for _, v in verdicts.values()]).median())
    else:
        x = torch.randn(cfg.batch_size, weights[0].shape[1], generator=torch.Generator().manual_seed(0))
        dense = weights[0]
        dense_ms = compare({"dense": lambda: x @ dense.T}, repeats=cfg.repeats)["dense"].median_ms
    out = []
    for i in range(len(weights)):
        if i not in verdicts:
            out.append((dense_ms, f"dense (below min_sparsity {cfg.min_sparsity:.0%}: sparsify keeps it dense)"))
            continue
        fmt, v = verdicts[i]
        lo, hi = v["speedup_ci"]
        timing = f"{fmt} {v['speedup']:.2f}x dense [{lo:.2f}, {hi:.2f}] at batch {cfg.batch_size}, {v['verdict']}"
        faster = v["verdict"] == "faster"
        out.append((dense_ms / v["speedup"] if faster else dense_ms, f"{'sparse' if faster else 'dense'} ({timing})"))
    return out


def _latency(layer: nn.Module, weight: torch.Tensor, latency_fn: Callable[[nn.Module], float]) -> float:
    """``latency_fn`` of a copy of ``layer`` holding ``weight`` (the model is not touched)."""
    probe = copy.deepcopy(layer)
    with torch.no_grad():
        weight_of(probe).copy_(weight.reshape(weight_of(probe).shape).to(weight_of(probe).dtype))
    return float(latency_fn(probe))
