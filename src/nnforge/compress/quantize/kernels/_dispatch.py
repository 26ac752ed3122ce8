"""``qgemv``: the compiled kernel for small batches, pure torch otherwise."""

from __future__ import annotations

import torch

from nnforge.compress.quantize.kernels._build import load_library
from nnforge.compress.quantize.kernels._format import PackedWeight
from nnforge.compress.quantize.kernels._reference import reference_matmul
from nnforge.errors import ConfigError, NnforgeError

__all__ = ["qgemv", "backend", "MAX_KERNEL_BATCH"]

MAX_KERNEL_BATCH = 64  # measured: up to ~64 rows the packed kernel beats dequantising the weight for each call


def fits_int32(w: PackedWeight) -> bool:
    """Whether the kernel's int32 sums of ``code * activation`` over one group (the whole row with per-row
    scales) cannot overflow: codes reach ``2**bits - 1`` and activations ±127, so an int8 weight with one scale
    per row of more than ~66,000 inputs needs the reference path (which sums the same products in float)."""
    return w.group * (2 ** w.spec.bits - 1) * 127 < 2**31


def backend(isa: str | None = None) -> str:
    """The active path: ``avx512vnni``, ``avx2``, ``scalar`` (compiled) or ``torch`` (fallback).

    ``isa`` (else ``$NNFORGE_KERNELS``) asks for ``auto``, ``avx512``, ``avx2``, ``scalar`` or ``torch``;
    the first call compiles the kernels (a few seconds) unless they are cached.
    """
    return load_library(isa)[1]


def qgemv(x: torch.Tensor, w: PackedWeight, *, isa: str | None = None, num_threads: int | None = None) -> torch.Tensor:
    """``x (..., K) @ W.T -> (..., N)`` float32 for a packed weight, activations quantised to int8 per row.

    Uses the compiled kernel when at most :data:`MAX_KERNEL_BATCH` rows come in, it is available and its int32
    sums cannot overflow (:func:`fits_int32`);
    otherwise :func:`reference_matmul` (same activation rounding, plain torch) for small batches, or the
    fp32 dequantise-and-matmul for larger ones and for tensors off the CPU (where the kernel cannot read).
    Input holding NaN or inf takes the fp32 path whatever its size, so those values propagate as through
    ``nn.Linear`` (the compiled kernel detects them for free).

    Raises:
        ConfigError: ``x``'s last dimension is not ``w.K``, or ``x`` and ``w`` are on different devices.
    """
    if x.shape[-1] != w.K:
        raise ConfigError(f"qgemv: x has {x.shape[-1]} features but the packed weight expects K={w.K}.")
    x2 = x.reshape(-1, w.K)
    M = x2.shape[0]
    if x.device != w.data.device:
        raise ConfigError(f"qgemv: x is on {x.device} but the packed weight on {w.data.device}.")
    if M > MAX_KERNEL_BATCH or x.device.type != "cpu":  # the compiled kernel reads CPU memory only
        return reference_matmul(x, w, act_quant=False)
    lib, _ = load_library(isa)
    if lib is None or M == 0 or not fits_int32(w):
        # NaN / inf rows take the fp32 path, where they propagate (int8 rounding would turn them into garbage)
        return reference_matmul(x, w, act_quant=bool(torch.isfinite(x2).all()))
    x2 = x2.detach().to(torch.float32).contiguous()
    y = torch.empty(M, w.N, dtype=torch.float32)
    spec = w.spec
    zeros = w.zeros.data_ptr() if w.zeros is not None else None
    rc = lib.nnf_qgemm(x2.data_ptr(), M, w.K, w.data.data_ptr(), w.scales.data_ptr(), zeros,
                       spec.z_symmetric, spec.amul, spec.bits, w.N, w.Kp, w.group,
                       y.data_ptr(), num_threads or torch.get_num_threads())
    if rc == 1:  # x holds NaN or inf: the kernel wrote nothing; fp32 propagates them as nn.Linear does
        return reference_matmul(x, w, act_quant=False)
    if rc != 0:
        raise NnforgeError(f"qgemv kernel rejected its arguments (code {rc}) for {w.fmt} N={w.N} K={w.K} G={w.group}.")
    return y.reshape(*x.shape[:-1], w.N)
