"""GPTQ: column-by-column quantisation with second-order error feedback from the input Hessian."""

from __future__ import annotations

from collections.abc import Callable

import torch

from nnforge.compress.quantize.calibrate._common import (
    check_group,
    check_int,
    check_range,
    check_weight,
    make_grid,
    pack_groups,
    quantize,
    rtn_params,
)
from nnforge.compress.quantize.calibrate._registry import CalibrationJob, register_calibrator
from nnforge.compress.quantize.kernels import PackedWeight
from nnforge.errors import ConfigError

__all__ = ["gptq", "upper_cholesky_of_inverse", "obs_sweep"]


def upper_cholesky_of_inverse(H: torch.Tensor, damp: float, what: str = "GPTQ") -> torch.Tensor:
    """``U`` with ``Uᵀ U = (H + damp * mean(diag H) * I)⁻¹`` (float64), or a :class:`ConfigError` naming ``what``.

    The factor that drives the error feedback of GPTQ and of SparseGPT (both from the OBS framework)."""
    K = H.shape[0]
    damping = damp * float(torch.diagonal(H).mean())
    Hd = H.clone()
    Hd.diagonal().add_(damping)
    L, info = torch.linalg.cholesky_ex(Hd)
    U = L
    if int(info) == 0:
        U, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(L), upper=True)
    if int(info) != 0 or not bool(torch.isfinite(U).all()):
        raise ConfigError(f"{what}: the Hessian ({K}x{K}) is singular or not positive definite even after damping "
                          f"with damp={damp} (adding {damping:.3g} = damp * mean diagonal to the diagonal); the "
                          "Cholesky factorisation failed. Use a larger 'damp' (e.g. 0.01-0.1) or more calibration "
                          "data (more tokens than input features).")
    return U


def gptq(w: torch.Tensor, hessian: torch.Tensor, fmt: str, group_size: int | None = 128, *, symmetric: bool = True,
         damp: float = 0.01, block_size: int = 128, act_order: bool = False) -> PackedWeight:
    """GPTQ (Frantar et al. 2023, "GPTQ: Accurate Post-Training Quantization for Generative Pre-trained
    Transformers"): quantise ``w`` (N, K) one input column at a time, spreading each column's rounding error
    over the columns not yet quantised so as to minimise the layer-output error ``||X Wᵀ - X Ŵᵀ||²``.

    ``hessian`` is ``XᵀX / n`` (K, K) of the layer inputs (:func:`collect_stats`). As in the reference
    implementation: dead inputs (zero diagonal) get ``H_jj = 1`` and a zero weight column; the diagonal is
    damped by ``damp * mean(diag H)``; the upper Cholesky factor of ``H⁻¹`` drives the error feedback, applied
    within blocks of ``block_size`` columns and lazily to the rest of the matrix after each block. Group
    scales (and zero points) are computed when a group starts, from the error-updated weights, exactly as RTN
    computes them for the format (symmetric absmax, asymmetric min/max, ternary/binary absmean); per-row
    scales come from the whole (dead-column-zeroed) weight. Groups never straddle blocks: the block length
    is rounded to a multiple of the group size. Scales are rounded to fp16 before the codes are chosen, so
    ``dequantize()`` is exactly the weight GPTQ optimised.

    Weights that are exactly zero (left by a pruning step) stay at the grid's code for zero (0 itself wherever
    the format can represent it, i.e. every format but binary): the error feedback still flows through them, but
    they never turn back into non-zeros, so prune-then-quantize keeps its sparsity; group scales come from the
    kept weights. A weight without zeros is quantised exactly as before.

    ``act_order`` quantises columns in order of decreasing ``H_jj``; since the packed format groups
    consecutive columns, group scales are then computed up front from the original weight ("static
    groups"). A Hessian that stays singular after damping raises a :class:`ConfigError` that says so.
    Runs on the CPU: the weight in float32, the damping and Cholesky factorisations in float64.
    """
    grid = make_grid(fmt, symmetric)
    W = check_weight(w)
    N, K = W.shape
    G = check_group(K, grid.spec.bits, group_size)
    if not isinstance(hessian, torch.Tensor) or tuple(hessian.shape) != (K, K):
        got = tuple(hessian.shape) if isinstance(hessian, torch.Tensor) else type(hessian).__name__
        raise ConfigError(f"The 'hessian' parameter must be a ({K}, {K}) tensor for a weight with K={K} inputs. "
                          f"Got {got} instead.")
    H = hessian.detach().to(device="cpu", dtype=torch.float64).clone()
    if not bool(torch.isfinite(H).all()):
        raise ConfigError("The 'hessian' parameter holds NaN or infinite values: recollect the calibration statistics.")
    check_range("damp", damp, 0.0, float("inf"), hi_open=True)
    check_int("block_size", block_size, 1)
    if not isinstance(act_order, bool):
        raise ConfigError(f"The 'act_order' parameter must be True or False. Got {act_order!r} instead.")

    zeros = W == 0  # zeros a pruning step left: kept zero (the error feedback would fill them in)
    dead = torch.diagonal(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    ng = K // G
    # group parameters known up front: per-row scales, or every group when act_order ("static groups")
    static = group_size is None or act_order
    S = torch.zeros(N, ng, 1)
    Z = torch.zeros(N, ng, 1) if not grid.symmetric else None
    if static:
        s0, z0 = rtn_params(W.view(N, ng, G), grid)
        S.copy_(s0)
        if Z is not None and z0 is not None:
            Z.copy_(z0)
    perm = torch.argsort(torch.diagonal(H), descending=True, stable=True) if act_order else torch.arange(K)
    W = W[:, perm]
    pruned = zeros[:, perm] if bool(zeros.any()) else None
    H = H[perm][:, perm]
    Hinv = upper_cholesky_of_inverse(H, damp).to(torch.float32)
    group_of = perm // G  # group (in the original column order) of each permuted column

    Q = torch.zeros(N, K)

    def column(W1: torch.Tensor, Hinv1: torch.Tensor, i: int, col: int) -> torch.Tensor:
        g = int(group_of[col])
        z = Z[:, g] if Z is not None else None
        if not static and col % G == 0:
            block = W1[:, i : i + G]
            if pruned is not None:  # (not static: columns in their own order) scales from the kept weights
                block = block.masked_fill(pruned[:, col : col + G], 0.0)
            sg, zg = rtn_params(block.unsqueeze(1), grid)
            S[:, g] = sg[:, 0]
            if Z is not None and zg is not None:
                Z[:, g] = zg[:, 0]
                z = Z[:, g]
        q, deq = quantize(W1[:, i : i + 1], S[:, g], z, grid)
        if pruned is not None and bool(pruned[:, col].any()):
            q0, deq0 = quantize(torch.zeros_like(W1[:, i : i + 1]), S[:, g], z, grid)  # the grid's code for 0
            keep = pruned[:, col : col + 1]
            q, deq = torch.where(keep, q0, q), torch.where(keep, deq0, deq)
        Q[:, col] = q[:, 0]
        return deq[:, 0]

    obs_sweep(W, Hinv, G * max(1, block_size // G) if group_size is not None else block_size, column)
    Q = Q[:, torch.argsort(perm)]
    return pack_groups(Q.view(N, ng, G), S, Z, grid, group_size)


def obs_sweep(W: torch.Tensor, Hinv: torch.Tensor, block: int,
              column: Callable[[torch.Tensor, torch.Tensor, int, int], torch.Tensor]) -> None:
    """The column sweep GPTQ and SparseGPT share: replace each column of ``W`` (N, K), left to right, by
    ``column(W1, Hinv1, i, col)`` and spread its error over the columns not yet replaced (in place).

    ``Hinv`` is :func:`upper_cholesky_of_inverse` (K, K). Columns go in blocks of ``block``: ``W1`` is the
    current block with the error feedback so far (``i`` the column within it, ``col`` in ``W``), ``Hinv1`` its
    diagonal block of ``Hinv``; a block's errors reach the later columns lazily, in one matmul, when it ends.
    ``W`` ends holding exactly the values ``column`` returned.
    """
    K = W.shape[1]
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            q = column(W1, Hinv1, i, i1 + i)
            Q1[:, i] = q
            err = (W1[:, i] - q) / Hinv1[i, i]
            W1[:, i:] -= err.unsqueeze(1) * Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]


@register_calibrator("gptq", needs_data=True, summary="second-order error feedback from the input Hessian")
def _gptq(job: CalibrationJob) -> tuple[PackedWeight, None]:
    return gptq(job.w, job.stats.hessian, job.fmt, job.group_size, symmetric=job.symmetric,
                damp=job.options.get("damp", 0.01), act_order=job.options.get("act_order", False)), None
