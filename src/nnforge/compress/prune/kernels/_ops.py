"""``torch.ops.nnforge.sparse_mm``: the sparse matmul as a torch custom op, and :func:`sparse_mm`.

On the CPU it calls the compiled kernels (``sparse.cpp`` through ctypes, built at first use like the quantized
kernels: ``$NNFORGE_KERNELS`` / ``isa=`` pick ``auto``, ``avx2``, ``scalar`` or ``torch``); with no compiled
library, or off the CPU, it runs :func:`reference_sparse_mm` (the same arithmetic in torch). Its fake
implementation checks shapes and dtypes with ``torch._check``; its gradient with respect to ``x`` is
``grad @ dense(W)`` (the stored weight gets none: it is a storage format, not a trainable parameter).
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Any

import torch

from nnforge.compress.prune.kernels._format import SparseWeight, sparse_format
from nnforge.compress.prune.kernels._reference import reference_sparse_mm
from nnforge.compress.quantize.kernels import compile_library
from nnforge.errors import ConfigError, NnforgeError

__all__ = ["sparse_mm", "sparse_mm_op", "run_sparse_mm", "sparse_backend"]

SOURCE = Path(__file__).with_name("sparse.cpp")
_SCHEMA = ("(Tensor x, Tensor values, Tensor indices, Tensor? row_ptr, Tensor? scales, str fmt, int n, int k, "
           "str isa, int num_threads) -> Tensor")


@functools.lru_cache(maxsize=8)
def _bind(lib: Any) -> Any:
    vp, i = ctypes.c_void_p, ctypes.c_int
    lib.nnf_sparse_mm.restype = i
    lib.nnf_sparse_mm.argtypes = [i, vp, i, i, i, i, vp, vp, vp, vp, vp, i]
    return lib


def _library(isa: str | None) -> tuple[Any, str]:
    lib, name = compile_library(SOURCE, isa or None)
    return (None, "torch") if lib is None else (_bind(lib), name)


def sparse_backend(isa: str | None = None) -> str:
    """The active path for the sparse kernels: ``avx2``, ``scalar`` (compiled) or ``torch`` (fallback).

    An AVX-512 build reports ``avx512vnni`` and runs the AVX2 code (the sparse kernels have no AVX-512 path).
    """
    return _library(isa)[1]


def _weight(values: torch.Tensor, indices: torch.Tensor, row_ptr: torch.Tensor | None, scales: torch.Tensor | None,
            fmt: str, n: int, k: int) -> SparseWeight:
    c = [t.contiguous() if t is not None else None for t in (values, indices, row_ptr, scales)]
    return SparseWeight(fmt, c[0], c[1], c[2], c[3], n, k)  # type: ignore[arg-type]


def run_sparse_mm(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, row_ptr: torch.Tensor | None,
                  scales: torch.Tensor | None, fmt: str, n: int, k: int, isa: str = "",
                  num_threads: int = 0) -> torch.Tensor:
    """What ``torch.ops.nnforge.sparse_mm`` computes (its implementation, callable without the dispatcher)."""
    return _run(x, _weight(values, indices, row_ptr, scales, fmt, n, k), isa, num_threads)


def _run(x: torch.Tensor, w: SparseWeight, isa: str, num_threads: int) -> torch.Tensor:
    """The kernel (or the torch fallback) on a checked :class:`SparseWeight` (its shapes were checked when built)."""
    n, k = w.N, w.K
    x2 = x.detach().reshape(-1, k)
    lib = _library(isa)[0] if x.device.type == "cpu" and x2.shape[0] and w.values.device.type == "cpu" else None
    if lib is None:
        return reference_sparse_mm(x2, w).reshape(*x.shape[:-1], n)
    x2 = x2.to(torch.float32).contiguous()
    y = torch.empty(x2.shape[0], n, dtype=torch.float32)
    # a strided view read as dense would be wrong: contiguous() is free for the contiguous tensors callers pass
    vals, idx = w.values.contiguous(), w.indices.contiguous()
    rp = w.row_ptr.contiguous() if w.row_ptr is not None else None
    sc = w.scales.contiguous() if w.scales is not None else None
    rc = lib.nnf_sparse_mm(w.spec.code, x2.data_ptr(), x2.shape[0], k, w.Kp, n, vals.data_ptr(), idx.data_ptr(),
                           rp.data_ptr() if rp is not None else None, sc.data_ptr() if sc is not None else None,
                           y.data_ptr(), num_threads or torch.get_num_threads())
    if rc == 1:  # an int8 format met NaN or inf: the reference computes those rows in fp32, where they propagate
        return reference_sparse_mm(x2, w).reshape(*x.shape[:-1], n)
    if rc != 0:
        raise NnforgeError(f"sparse_mm kernel rejected its arguments (code {rc}) for {w.fmt} N={n} K={k}: "
                           "report this with the shapes.")
    return y.reshape(*x.shape[:-1], n)


@torch.library.custom_op("nnforge::sparse_mm", mutates_args=(), schema=_SCHEMA)
def sparse_mm_op(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, row_ptr: torch.Tensor | None,
                 scales: torch.Tensor | None, fmt: str, n: int, k: int, isa: str, num_threads: int) -> torch.Tensor:
    """``x (..., k) @ W.T -> (..., n)`` float32 for a sparse ``W`` stored in ``fmt``."""
    return run_sparse_mm(x, values, indices, row_ptr, scales, fmt, n, k, isa, num_threads)


@sparse_mm_op.register_fake
def _fake(x: torch.Tensor, values: torch.Tensor, indices: torch.Tensor, row_ptr: torch.Tensor | None,
          scales: torch.Tensor | None, fmt: str, n: int, k: int, isa: str, num_threads: int) -> torch.Tensor:
    torch._check(x.dtype.is_floating_point, lambda: f"sparse_mm: x must be floating point, got {x.dtype}")
    torch._check(x.shape[-1] == k, lambda: f"sparse_mm: x has {x.shape[-1]} features, the sparse weight K={k}")
    spec = sparse_format(fmt)
    torch._check(values.dtype == spec.value_dtype, lambda: f"sparse_mm: {fmt} values must be {spec.value_dtype}")
    if spec.pattern == "2:4":
        kp = spec.padded_k(k)
        torch._check(tuple(values.shape) == (n, kp // 2) and tuple(indices.shape) == (n, kp // 8),
                     lambda: f"sparse_mm: 2:4 values must be ({n}, {kp // 2}) and indices ({n}, {kp // 8})")
    else:
        torch._check(row_ptr is not None and tuple(row_ptr.shape) == (n + 1,), lambda: "sparse_mm: CSR row_ptr (n+1,)")
    torch._check(x.device == values.device, lambda: "sparse_mm: x and the sparse weight on one device")
    return x.new_empty((*x.shape[:-1], n), dtype=torch.float32)


def _setup_context(ctx: Any, inputs: tuple[Any, ...], output: torch.Tensor) -> None:
    x, values, indices, row_ptr, scales, fmt, n, k, _, _ = inputs
    ctx.save_for_backward(values, indices, row_ptr, scales)
    ctx.meta = (fmt, n, k, x.dtype, x.shape)


def _backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
    values, indices, row_ptr, scales = ctx.saved_tensors
    fmt, n, k, dtype, shape = ctx.meta
    wd = _weight(values, indices, row_ptr, scales, fmt, n, k).dense()
    gx = (grad.reshape(-1, n).to(torch.float32) @ wd).reshape(shape).to(dtype)
    return gx, None, None, None, None, None, None, None, None, None


sparse_mm_op.register_autograd(_backward, setup_context=_setup_context)


def check_input(x: torch.Tensor, w: SparseWeight) -> None:
    """Refuse what the kernels cannot read: non-float activations, a wrong K, tensors on different devices."""
    if not x.dtype.is_floating_point:
        raise ConfigError(f"sparse_mm: x must be a floating-point tensor. Got {x.dtype} instead; convert it with x.float().")
    if x.dim() == 0 or x.shape[-1] != w.K:
        raise ConfigError(f"sparse_mm: x has {x.shape[-1] if x.dim() else 0} features but the sparse weight expects "
                          f"K={w.K}.")
    if x.device != w.values.device:
        raise ConfigError(f"sparse_mm: x is on {x.device} but the sparse weight on {w.values.device}; move the layer "
                          "with .to(device).")


def sparse_mm(x: torch.Tensor, w: SparseWeight, *, isa: str | None = None, num_threads: int | None = None) -> torch.Tensor:
    """``x (..., K) @ W.T -> (..., N)`` float32 for a :class:`SparseWeight`, any batch size.

    fp32 formats compute in fp32 (the same values as ``x @ dense(W).T`` up to summation order); int8 formats
    round activations to int8 per row and sum exact integer products, as the quantized int8 kernels do. A
    row's output does not depend on the other rows of the batch. Autograd sees it (``torch.ops.nnforge.sparse_mm``).

    Raises:
        ConfigError: ``x`` is not floating point, its last dimension is not ``w.K``, or it is on another device.
    """
    check_input(x, w)
    if torch.compiler.is_compiling() or (x.requires_grad and torch.is_grad_enabled()):
        return sparse_mm_op(x, w.values, w.indices, w.row_ptr, w.scales, w.fmt, w.N, w.K, isa or "", num_threads or 0)
    return _run(x, w, isa or "", num_threads or 0)  # eager without autograd: the op's arithmetic, no dispatch

