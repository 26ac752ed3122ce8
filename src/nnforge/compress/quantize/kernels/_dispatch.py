"""``qgemv``: the packed matmul for any batch, its inputs checked at the boundary."""

from __future__ import annotations

import torch

from nnforge.compress.quantize.kernels._build import load_library
from nnforge.compress.quantize.kernels._format import PackedWeight
from nnforge.compress.quantize.kernels._ops import fits_int32, qgemm, run_qgemm
from nnforge.errors import ConfigError

__all__ = ["qgemv", "backend", "fits_int32"]


def backend(isa: str | None = None) -> str:
    """The active path: ``avx512vnni``, ``avx2``, ``scalar`` (compiled) or ``torch`` (fallback).

    ``isa`` (else ``$NNFORGE_KERNELS``) asks for ``auto``, ``avx512``, ``avx2``, ``scalar`` or ``torch``;
    the first call compiles the kernels (a few seconds) unless they are cached.
    """
    return load_library(isa)[1]


def check_operands(x: torch.Tensor, w: PackedWeight) -> None:
    """Refuse what the kernels cannot read: non-float activations, a wrong K, tensors on different devices.

    Dtypes and shapes of the packed tensors are checked when the :class:`PackedWeight` is built; strided
    (non-contiguous) packed tensors are made contiguous by the op, never read as if they were dense.
    """
    if not x.dtype.is_floating_point:
        raise ConfigError(f"qgemv: x must be a floating-point tensor. Got {x.dtype} instead; convert it with x.float().")
    if x.dim() == 0 or x.shape[-1] != w.K:
        raise ConfigError(f"qgemv: x has {x.shape[-1] if x.dim() else 0} features but the packed weight expects "
                          f"K={w.K}.")
    devices = {w.data.device, w.scales.device, *([w.zeros.device] if w.zeros is not None else [])}
    if len(devices) > 1:
        raise ConfigError(f"qgemv: the packed weight's tensors are on different devices ({sorted(map(str, devices))}); "
                          "move the layer with .to(device).")
    if x.device != w.data.device:
        raise ConfigError(f"qgemv: x is on {x.device} but the packed weight on {w.data.device}.")


def qgemv(x: torch.Tensor, w: PackedWeight, *, isa: str | None = None, num_threads: int | None = None) -> torch.Tensor:
    """``x (..., K) @ W.T -> (..., N)`` float32 for a packed weight, activations quantised to int8 per row.

    Every batch size, grad mode and device computes the same arithmetic through ``torch.ops.nnforge.qgemm``
    (docs/kernels.md, "Numerics"): the compiled kernel on the CPU, :func:`integer_matmul` elsewhere, with no
    compiler, or where the kernel's int32 sums could overflow (:func:`fits_int32`). A row's output does not
    depend on the other rows of the batch. Rows holding NaN or inf are computed in fp32, where those values
    propagate as through ``nn.Linear``. Autograd sees it: the gradient of ``x`` is ``grad @ dequant(W)``.

    Raises:
        ConfigError: ``x`` is not floating point, its last dimension is not ``w.K``, or ``x`` and ``w`` are on
            different devices.
    """
    check_operands(x, w)
    args = (x, w.data, w.scales, w.zeros, w.fmt, w.N, w.K, w.group_size, isa or "", num_threads or 0)
    if torch.compiler.is_compiling() or (x.requires_grad and torch.is_grad_enabled()):
        return qgemm(*args)
    # eager without autograd: the op's own implementation, the same numbers without ~100 us of dispatch
    return run_qgemm(*args)
