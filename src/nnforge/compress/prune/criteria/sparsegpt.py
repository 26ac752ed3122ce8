"""SparseGPT (Frantar & Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
One-Shot"): choose the zeros by the OBS saliency ``w² / [H⁻¹]_jj²`` and update the kept weights to repair the
layer's output, column by column, with GPTQ's Hessian statistics and Cholesky sweep."""

from __future__ import annotations

import torch

from nnforge.compress.prune.criteria._registry import Pattern, PruneJob, register_criterion
from nnforge.compress.quantize.calibrate.gptq import obs_sweep, upper_cholesky_of_inverse
from nnforge.errors import ConfigError

__all__ = ["sparsegpt", "sparsegpt_scores"]


def _prepared(w: torch.Tensor, hessian: torch.Tensor, damp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The weight (dead input columns zeroed, float32) and the upper Cholesky factor of the damped ``H⁻¹``."""
    W = w.detach().to(device="cpu", dtype=torch.float32).clone()
    K = W.shape[1]
    if not isinstance(hessian, torch.Tensor) or tuple(hessian.shape) != (K, K):
        raise ConfigError(f"SparseGPT: the Hessian must be ({K}, {K}) for a weight with {K} inputs")
    H = hessian.detach().to(device="cpu", dtype=torch.float64).clone()
    dead = torch.diagonal(H) == 0  # inputs that were always zero: their weights do nothing, and are dropped
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    return W, upper_cholesky_of_inverse(H, damp, "SparseGPT").to(torch.float32)


def sparsegpt(w: torch.Tensor, hessian: torch.Tensor, pattern: Pattern, *, damp: float = 0.01,
              block_size: int = 128) -> torch.Tensor:
    """``w`` (N, K) pruned to ``pattern`` with its kept weights updated to minimise ``||X Wᵀ - X Ŵᵀ||²``.

    As in the reference implementation: unstructured zeros are chosen a block of ``block_size`` columns at a
    time, from the error-updated weights (the block's lowest saliencies: over the whole block, or per row
    with ``compare="row"``; counts rounded cumulatively, so the matrix gets exactly ``round(sparsity * N * K)``
    zeros, or ``round(sparsity * K)`` per row); N:M zeros are chosen every ``m`` columns (the block length is
    rounded to a multiple of ``m``). ``hessian`` is ``XᵀX / n`` of the layer inputs (:func:`collect_stats`).
    """
    W, Hinv = _prepared(w, hessian, damp)
    N, K = W.shape
    d = torch.diagonal(Hinv)
    drop = torch.zeros(N, K, dtype=torch.bool)
    m = pattern.m
    block = m * max(1, block_size // m) if m is not None else block_size

    def column(W1: torch.Tensor, Hinv1: torch.Tensor, i: int, col: int) -> torch.Tensor:
        if m is not None and pattern.n is not None and i % m == 0:
            saliency = W1[:, i : i + m].square() / d[col : col + m].square()
            low = torch.topk(saliency, m - pattern.n, dim=1, largest=False).indices
            drop[:, col : col + m].scatter_(1, low, True)
        elif m is None and i == 0:
            _choose_block(W1, d[col : col + W1.shape[1]], col, pattern, K, drop)
        return torch.where(drop[:, col], 0.0, W1[:, i])

    obs_sweep(W, Hinv, block, column)
    return W


def _choose_block(W1: torch.Tensor, d: torch.Tensor, start: int, pattern: Pattern, K: int,
                  drop: torch.Tensor) -> None:
    """Mark the lowest-saliency weights of one block (columns ``start`` on) in ``drop``."""
    N, width = W1.shape
    saliency = W1.square() / d.unsqueeze(0).square()
    s, end = pattern.sparsity, start + width
    if pattern.compare == "row":
        count = round(s * end) - round(s * start)
        if count:
            low = torch.argsort(saliency, dim=1, stable=True)[:, :count]
            drop[:, start:end].scatter_(1, low, True)
        return
    count = round(s * N * end) - round(s * N * start)
    if count:
        low = torch.argsort(saliency.reshape(-1), stable=True)[:count]
        block = torch.zeros(N * width, dtype=torch.bool)
        block[low] = True
        drop[:, start:end] |= block.view(N, width)


def sparsegpt_scores(job: PruneJob) -> torch.Tensor:
    """The OBS saliency ``w_ij² / [H⁻¹]_jj²`` of the weights as they are (before any update)."""
    if job.stats is None:
        raise ConfigError("criterion 'sparsegpt' needs the layer's calibration statistics: pass calibration= batches")
    W, Hinv = _prepared(job.w, job.stats.hessian, job.options.get("damp", 0.01))
    return W.square() / torch.diagonal(Hinv).unsqueeze(0).square()


@register_criterion("sparsegpt", score=sparsegpt_scores, needs_data=True,
                    summary="OBS saliency with Hessian-based reconstruction of the kept weights; calibration data")
def _sparsegpt(job: PruneJob) -> torch.Tensor:
    if job.stats is None:
        raise ConfigError("criterion 'sparsegpt' needs the layer's calibration statistics: pass calibration= batches")
    return sparsegpt(job.w, job.stats.hessian, job.pattern, damp=job.options.get("damp", 0.01),
                     block_size=job.options.get("block_size", 128))
