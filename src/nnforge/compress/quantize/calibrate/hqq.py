"""Half-Quadratic Quantization: data-free, per-group optimisation of the zero point (or the scale)."""

from __future__ import annotations

import torch

from nnforge.compress.quantize.calibrate._common import (
    Grid,
    check_group,
    check_int,
    check_range,
    check_weight,
    format_spec,
    fp16,
    group_sq_err,
    make_grid,
    pack_groups,
    quantize,
    rtn_params,
    safe,
    unpack_groups,
)
from nnforge.compress.quantize.calibrate._registry import CalibrationJob, register_calibrator
from nnforge.compress.quantize.kernels import PackedWeight, quantize_weight
from nnforge.errors import ConfigError

__all__ = ["hqq"]

_REFINE_STEPS = 4  # least-squares scale refits for fixed integer zero points (each kept only if it helps)


def _shrink(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """The generalised soft-thresholding operator of HQQ: the prox of ``|x|_p^p / beta`` (p <= 1)."""
    if p == 1:
        return torch.sign(x) * torch.relu(x.abs() - 1.0 / beta)
    return torch.sign(x) * torch.relu(x.abs() - x.abs().pow(p - 1) / beta)


def _ls_scale(target: torch.Tensor, v: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The least-squares scale of ``target ~ s * v`` per group (``s`` kept where ``v`` is all zero)."""
    den = v.pow(2).sum(-1, keepdim=True)
    return torch.where(den > 0, (target * v).sum(-1, keepdim=True) / den.clamp_min(1e-30), s).clamp_min(0)


def _keep_better(best: list[torch.Tensor], cand: list[torch.Tensor]) -> None:
    """Per group, replace ``best = [err, s, z, q]`` by ``cand`` where its error is lower (in place)."""
    better = cand[0] < best[0]
    for i in range(len(best)):
        best[i] = torch.where(better, cand[i], best[i])


def _candidate(wg: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, grid: Grid) -> list[torch.Tensor]:
    s16 = fp16(s)
    q, deq = quantize(wg, s16, z, grid)
    return [group_sq_err(wg, deq), s16, z if z is not None else torch.zeros_like(s16), q]


def _refine(wg: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, grid: Grid, best: list[torch.Tensor]) -> None:
    """Alternate codes and the least-squares scale for a fixed (integer) zero point, keeping improvements."""
    for _ in range(_REFINE_STEPS):
        q, _ = quantize(wg, fp16(s), z, grid)
        s = _ls_scale(wg, q - z if z is not None else q, s)
        _keep_better(best, _candidate(wg, s, z, grid))


def hqq(w: torch.Tensor, fmt: str, group_size: int | None = 128, *, symmetric: bool | None = None, iters: int = 20,
        p: float = 0.7, beta: float = 10.0, kappa: float = 1.01) -> PackedWeight:
    """Half-Quadratic Quantization (Badri & Shaji 2023, "Half-Quadratic Quantization of Large Machine
    Learning Models"): round-to-nearest with per-group parameters optimised on the weights alone.

    HQQ minimises ``||W - s(Q - z)||_p^p`` (``p < 1``, robust to the outlier weights that dominate min/max)
    by half-quadratic splitting: alternate ``Q = round(W/s + z)``, the shrinkage
    ``W_e = shrink_p(W - s(Q - z), beta)`` and the closed-form zero point ``z = mean(Q - (W - W_e)/s)``,
    with ``beta *= kappa`` each of ``iters`` steps, starting from RTN's min/max parameters.

    Asymmetric (int4/int3/int2 with zero points): each step also refits the scale by least squares
    (``s = <W - W_e, Q - z> / <Q - z, Q - z>``); the best real-valued zero point is then rounded to an integer
    code (the packed format stores uint8 zero points; both neighbours are tried) and the scale refitted by
    least squares for the fixed codes, alternating with re-rounding. Symmetric formats, ternary and binary
    have a fixed zero point, so the same iteration optimises the scale only (``s = <W - W_e, Q> / <Q, Q>``).

    Every group keeps whichever of the iterates, the refits and plain RTN
    (:func:`~nnforge.compress.quantize.kernels.quantize_weight`) has the lowest squared reconstruction
    error with the fp16 scale actually stored, so the result is never worse than RTN, group by group.

    ``symmetric=None`` (default) means asymmetric where the format has zero points (int4, int3, int2) and
    symmetric otherwise (int8, ternary, binary); ``symmetric=False`` for a symmetric-only format is an error.
    """
    if symmetric is None:
        symmetric = not format_spec(fmt).asymmetric_ok
    if not isinstance(symmetric, bool):
        raise ConfigError(f"The 'symmetric' parameter must be True, False or None. Got {symmetric!r} instead.")
    grid = make_grid(fmt, symmetric)
    W = check_weight(w)
    check_int("iters", iters, 0)
    check_range("p", p, 0.0, 1.0, lo_open=True)
    check_range("beta", beta, 0.0, float("inf"), lo_open=True, hi_open=True)
    check_range("kappa", kappa, 1.0, float("inf"), hi_open=True)
    N, K = W.shape
    G = check_group(K, grid.spec.bits, group_size)
    wg = W.view(N, K // G, G)

    # the incumbent: RTN exactly as quantize_weight packs it, [error, scale, zero, q] per group
    q0, s0, z0 = unpack_groups(quantize_weight(W, fmt, group_size, symmetric=symmetric), grid, G)
    best = [group_sq_err(wg, (q0 - z0) * s0 if z0 is not None else q0 * s0), s0,
            z0 if z0 is not None else torch.zeros_like(s0), q0]

    s, z = rtn_params(wg, grid)
    if z is None:
        # fixed zero point: half-quadratic iterations on the scale
        for _ in range(iters):
            q, deq = quantize(wg, s, None, grid)
            we = _shrink(wg - deq, beta, p)
            s = _ls_scale(wg - we, q, s)
            beta *= kappa
            _keep_better(best, _candidate(wg, s, None, grid))
        _refine(wg, best[1], None, grid, best)
        return pack_groups(best[3], best[1], None, grid, group_size)

    # asymmetric: half-quadratic iterations on a real-valued zero point (and the scale)
    qmax = grid.levels - 1
    zf = (-wg.amin(-1, keepdim=True).clamp(max=0) / safe(s)).clamp(0, qmax)
    sf = s
    err_f, z_f, s_f = torch.full_like(s, float("inf")), zf, s
    for _ in range(iters):
        q = torch.round(wg / safe(sf) + zf).clamp(0, qmax)
        we = _shrink(wg - (q - zf) * sf, beta, p)
        zf = (q - (wg - we) / safe(sf)).mean(-1, keepdim=True).clamp(0, qmax)
        sf = _ls_scale(wg - we, q - zf, sf)
        beta *= kappa
        err = group_sq_err(wg, (torch.round(wg / safe(sf) + zf).clamp(0, qmax) - zf) * sf)
        better = err < err_f
        err_f, z_f, s_f = torch.where(better, err, err_f), torch.where(better, zf, z_f), torch.where(better, sf, s_f)
    # integer zero points: both neighbours, from the HQQ scale and from RTN's, then least-squares refits
    for zi in (torch.floor(z_f), torch.ceil(z_f)):
        for start in (s_f, s):
            _keep_better(best, _candidate(wg, start, zi, grid))
            _refine(wg, start, zi, grid, best)
    _refine(wg, best[1], best[2], grid, best)
    return pack_groups(best[3], best[1], best[2], grid, group_size)


@register_calibrator("hqq", summary="half-quadratic optimisation of scales and zero points (no data)")
def _hqq(job: CalibrationJob) -> tuple[PackedWeight, None]:
    return hqq(job.w, job.fmt, job.group_size, symmetric=job.symmetric), None
