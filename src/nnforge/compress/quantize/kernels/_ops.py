"""``torch.ops.nnforge.qgemm``: the packed matmul as a torch custom op, so autograd and ``torch.compile`` see it.

One op for every batch size, grad mode and device: ``y = x @ dequant(W).T`` computed as int8 per-row
activations times the integer codes (see docs/kernels.md, "Numerics"). On the CPU it calls the compiled
kernel (``qgemv.cpp`` through ctypes) for any number of rows; with no compiled kernel, off the CPU, or where
the kernel's int32 sums could overflow, it runs the same arithmetic in torch (:func:`integer_matmul`).
Its fake implementation checks shapes, dtypes and devices with ``torch._check``; its gradient with respect to
``x`` is ``grad @ dequant(W)`` (straight-through past the activation rounding, as QAT does); the packed
weight gets none (it is integer data).

The op reads the packed tensors as they are given: callers pass contiguous ones, and it makes any others
contiguous before the kernel reads raw memory (a strided view read as dense gave wrong numbers before).
"""

from __future__ import annotations

import functools
from typing import Any

import torch

from nnforge.compress.quantize.kernels._build import load_library
from nnforge.compress.quantize.kernels._format import FormatSpec, PackedWeight, format_spec, padded_k
from nnforge.compress.quantize.kernels._reference import integer_matmul
from nnforge.errors import ConfigError, NnforgeError

__all__ = ["qgemm", "run_qgemm", "fits_int32"]

_SCHEMA = ("(Tensor x, Tensor data, Tensor scales, Tensor? zeros, str fmt, int n, int k, int? group_size, "
           "str isa, int num_threads) -> Tensor")


def fits_int32(w: PackedWeight) -> bool:
    """Whether the kernel's int32 sums of ``code * activation`` over one group (the whole row with per-row
    scales) cannot overflow: codes reach ``2**bits - 1`` and activations ±127, so an int8 weight with one scale
    per row of more than ~66,000 inputs takes :func:`integer_matmul` instead (same value, float64 sums)."""
    return w.group * (2 ** w.spec.bits - 1) * 127 < 2**31


@functools.lru_cache(maxsize=256)
def _geometry(fmt: str, k: int, group_size: int | None) -> tuple[FormatSpec, int, int]:
    """``(spec, Kp, G)`` of a format and shape (cached: the op runs once per layer call)."""
    spec = format_spec(fmt)
    kp = padded_k(k, spec.bits, group_size)
    return spec, kp, group_size or kp


def _packed(data: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, fmt: str, n: int, k: int,
            group_size: int | None) -> PackedWeight:
    z = zeros.contiguous() if zeros is not None else None
    return PackedWeight(fmt, data.contiguous(), scales.contiguous(), z, n, k, group_size)


def _check_packed(data: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, n: int, kp: int, g: int,
                  bits: int) -> None:
    """The shapes and dtypes the kernel will read raw memory as (a :class:`PackedWeight` checks the same)."""
    ok = (data.dtype == torch.uint8 and tuple(data.shape) == (n, kp * bits // 8) and scales.dtype == torch.float16
          and tuple(scales.shape) == (n, kp // g)
          and (zeros is None or (zeros.dtype == torch.uint8 and zeros.shape == scales.shape)))
    if not ok:
        raise ConfigError(f"qgemm: packed tensors data {data.dtype} {tuple(data.shape)}, scales {scales.dtype} "
                          f"{tuple(scales.shape)} do not fit n={n}, Kp={kp}, G={g}, {bits} bits; build them "
                          "with quantize_weight or PackedWeight.")


def _kernel(lib: Any, x2: torch.Tensor, data: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
            spec: FormatSpec, n: int, kp: int, g: int, num_threads: int) -> torch.Tensor | None:
    """The compiled kernel on contiguous float32 rows ``x2 (M, K)``; ``None`` when a row holds NaN or inf."""
    M, K = x2.shape
    y = torch.empty(M, n, dtype=torch.float32)
    rc = lib.nnf_qgemm(x2.data_ptr(), M, K, data.data_ptr(), scales.data_ptr(),
                       zeros.data_ptr() if zeros is not None else None, spec.z_symmetric, spec.amul, spec.bits, n,
                       kp, g, y.data_ptr(), num_threads or torch.get_num_threads())
    if rc == 1:
        return None
    if rc != 0:
        raise NnforgeError(f"qgemm kernel rejected its arguments (code {rc}) for {spec.name} N={n} K={K} G={g}: "
                           "report this with the shapes.")
    return y


def run_qgemm(x: torch.Tensor, data: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, fmt: str,
              n: int, k: int, group_size: int | None, isa: str = "", num_threads: int = 0) -> torch.Tensor:
    """What ``torch.ops.nnforge.qgemm`` computes (its implementation, callable without the dispatcher)."""
    spec, kp, g = _geometry(fmt, k, group_size)
    x2 = x.detach().reshape(-1, k)
    lib = load_library(isa or None)[0] if x.device.type == "cpu" and x2.shape[0] else None
    if lib is None or g * (2 ** spec.bits - 1) * 127 >= 2**31:  # see fits_int32
        return integer_matmul(x2, _packed(data, scales, zeros, fmt, n, k, group_size)).reshape(*x.shape[:-1], n)
    data, scales = data.contiguous(), scales.contiguous()  # a strided view read as dense would be wrong
    zeros = zeros.contiguous() if zeros is not None else None
    _check_packed(data, scales, zeros, n, kp, g, spec.bits)
    x2 = x2.to(torch.float32).contiguous()
    y = _kernel(lib, x2, data, scales, zeros, spec, n, kp, g, num_threads)
    if y is None:  # a row holds NaN or inf: fp32 for those rows, where they propagate; the kernel for the rest
        finite = torch.isfinite(x2).all(dim=-1)
        y = x2 @ _packed(data, scales, zeros, fmt, n, k, group_size).dequantize().T
        good = _kernel(lib, x2[finite].contiguous(), data, scales, zeros, spec, n, kp, g, num_threads)
        if good is not None and good.numel():
            y[finite] = good
    return y.reshape(*x.shape[:-1], n)


@torch.library.custom_op("nnforge::qgemm", mutates_args=(), schema=_SCHEMA)
def qgemm(x: torch.Tensor, data: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, fmt: str, n: int,
          k: int, group_size: int | None, isa: str, num_threads: int) -> torch.Tensor:
    """``x (..., k) @ dequant(W).T -> (..., n)`` float32, activations rounded to int8 per row.

    ``isa`` ("" for ``$NNFORGE_KERNELS``/auto) and ``num_threads`` (0: torch's count) choose the CPU kernel.
    """
    return run_qgemm(x, data, scales, zeros, fmt, n, k, group_size, isa, num_threads)


@qgemm.register_fake
def _qgemm_fake(x: torch.Tensor, data: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None, fmt: str,
                n: int, k: int, group_size: int | None, isa: str, num_threads: int) -> torch.Tensor:
    torch._check(x.dtype.is_floating_point, lambda: f"qgemm: x must be floating point, got {x.dtype}")
    torch._check(x.shape[-1] == k, lambda: f"qgemm: x has {x.shape[-1]} features, the packed weight K={k}")
    spec, kp, g = _geometry(fmt, k, group_size)
    torch._check(data.dtype == torch.uint8 and tuple(data.shape) == (n, kp * spec.bits // 8),
                 lambda: f"qgemm: data must be uint8 {(n, kp * spec.bits // 8)}, got {data.dtype} {tuple(data.shape)}")
    torch._check(scales.dtype == torch.float16 and tuple(scales.shape) == (n, kp // g),
                 lambda: f"qgemm: scales must be float16 {(n, kp // g)}, got {scales.dtype} {tuple(scales.shape)}")
    torch._check(zeros is None or (zeros.dtype == torch.uint8 and zeros.shape == scales.shape),
                 lambda: "qgemm: zeros must be uint8 shaped like scales")
    torch._check(x.device == data.device == scales.device, lambda: "qgemm: x and the packed weight on one device")
    return x.new_empty((*x.shape[:-1], n), dtype=torch.float32)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, data, scales, zeros, fmt, n, k, group_size, _, _ = inputs
    ctx.save_for_backward(data, scales, zeros)
    ctx.meta = (fmt, n, k, group_size, x.dtype, x.shape)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    data, scales, zeros = ctx.saved_tensors
    fmt, n, k, group_size, dtype, shape = ctx.meta
    wd = _packed(data, scales, zeros, fmt, n, k, group_size).dequantize()  # (n, k)
    gx = (grad.reshape(-1, n).to(torch.float32) @ wd).reshape(shape).to(dtype)
    return gx, None, None, None, None, None, None, None, None, None


qgemm.register_autograd(_backward, setup_context=_setup_context)
