"""Sparse weight formats: the stable storage layouts, packing from a pruned dense matrix, and :class:`SparseWeight`.

A sparse weight stores only what pruning kept: the kept values (fp32, or int8 with one fp32 scale per row)
and where they are (2-bit positions inside groups of 4 for 2:4, uint16 column indices and int64 row offsets
for CSR). docs/kernels.md, "Sparse kernels", describes the byte layouts; ``sparse.cpp`` reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch

from nnforge.errors import ConfigError
from nnforge.registry import Registry

__all__ = ["SPARSE_FORMATS", "SparseFormatSpec", "SparseWeight", "register_sparse_format", "sparse_format",
           "sparse_format_of_code", "sparsify_weight", "SPARSE_LAYOUT_VERSION", "MAX_K"]

SPARSE_LAYOUT_VERSION = 1
MAX_K = 65536  # CSR column indices are uint16; the int32 sums of the int8 formats stay exact far beyond this


@dataclass(frozen=True)
class SparseFormatSpec:
    """A registered sparse weight format.

    Args:
        name: the public name (``fmt="2:4"``).
        code: the kernel's format code and the code saved in a layer's ``layout`` buffer (stable: never reused).
        pattern: ``"2:4"`` (2 of every 4 consecutive weights kept, positions in 2 bits) or ``"unstructured"``
            (CSR: any weights kept).
        values: ``"fp32"`` (exact) or ``"int8"`` (symmetric, one fp32 scale per row; activations rounded to int8
            per row in the kernel, as the quantized int8 kernels do).
        k_multiple: K is padded with zeros to a multiple of this (the kernels' block of weights).
    """

    name: str
    code: int
    pattern: Literal["2:4", "unstructured"]
    values: Literal["fp32", "int8"]
    k_multiple: int = 1

    def padded_k(self, K: int) -> int:
        return -(-K // self.k_multiple) * self.k_multiple

    @property
    def value_dtype(self) -> torch.dtype:
        return torch.float32 if self.values == "fp32" else torch.int8


SPARSE_FORMATS: Registry[SparseFormatSpec] = Registry("sparse weight format")


def register_sparse_format(spec: SparseFormatSpec) -> SparseFormatSpec:
    """Register a sparse format; its name and ``code`` must both be new (codes are saved in files)."""
    taken = {other.code: other.name for other in SPARSE_FORMATS.values() if other.name != spec.name}
    if spec.code < 0 or spec.code in taken:
        raise ConfigError(f"sparse format {spec.name!r}: code must be a non-negative integer no other format uses "
                          f"(taken: {dict(sorted(taken.items()))}). Got {spec.code} instead.")
    SPARSE_FORMATS.add(spec.name, spec)
    return spec


# the built-in formats; codes 0-3 are the kernel's and are saved in files: they never change
register_sparse_format(SparseFormatSpec("2:4", 0, "2:4", "fp32", 16))
register_sparse_format(SparseFormatSpec("2:4-int8", 1, "2:4", "int8", 64))
register_sparse_format(SparseFormatSpec("csr", 2, "unstructured", "fp32"))
register_sparse_format(SparseFormatSpec("csr-int8", 3, "unstructured", "int8"))


def sparse_format(fmt: str) -> SparseFormatSpec:
    """The :class:`SparseFormatSpec` named ``fmt``, or a :class:`ConfigError` naming the choices."""
    if fmt in SPARSE_FORMATS:
        return SPARSE_FORMATS.get(fmt)
    raise ConfigError(f"The sparse 'fmt' parameter must be one of {SPARSE_FORMATS.names()}. Got {fmt!r} instead.")


def sparse_format_of_code(code: int) -> SparseFormatSpec | None:
    return next((s for s in SPARSE_FORMATS.values() if s.code == code), None)


# ---------------------------------------------------------------- 2:4 storage order
# fp32: a block of 4 groups holds its 8 values in group order (0, 2, 1, 3), two per group (lower position
# first); value e's position is bits [2e, 2e + 2) of the block's little-endian uint16.
_F32_GROUP, _F32_SLOT = [0, 0, 2, 2, 1, 1, 3, 3], [0, 1] * 4
# int8: value b (0..31) of a 64-weight block belongs to group 4L + t/2 (t < 8) or 8 + 4L + (t-8)/2, slot t % 2
_I8_GROUP = [4 * (b // 16) + (b % 16) // 2 if b % 16 < 8 else 8 + 4 * (b // 16) + (b % 16 - 8) // 2 for b in range(32)]
_I8_SLOT = [b % 2 for b in range(32)]


def _order(spec: SparseFormatSpec) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(group of each stored value, its slot, groups per block) of a 2:4 format (fresh tensors: fake-mode safe)."""
    if spec.values == "fp32":
        return torch.tensor(_F32_GROUP), torch.tensor(_F32_SLOT), 4
    return torch.tensor(_I8_GROUP), torch.tensor(_I8_SLOT), 16


def _pack_positions(pos: torch.Tensor, spec: SparseFormatSpec) -> torch.Tensor:
    """2-bit positions in storage order ``(N, blocks, values per block)`` -> index bytes ``(N, blocks * bytes)``."""
    N, nb, nv = pos.shape
    p = pos.to(torch.int32)
    if spec.values == "fp32":  # value e at bits 2e of a uint16
        word = (p << (2 * torch.arange(8))).sum(-1)  # (N, nb)
        out = torch.stack([word & 0xFF, word >> 8], -1)
    else:  # value 8p + j at bits 2p of byte j
        out = (p.view(N, nb, 4, 8) << (2 * torch.arange(4)).view(1, 1, 4, 1)).sum(2)
    return out.to(torch.uint8).reshape(N, -1)


def _unpack_positions(idx: torch.Tensor, spec: SparseFormatSpec, nb: int) -> torch.Tensor:
    """Inverse of :func:`_pack_positions`: ``(N, blocks, values per block)`` int64 positions 0..3."""
    N = idx.shape[0]
    b = idx.to(torch.int64).view(N, nb, -1)
    if spec.values == "fp32":
        word = b[..., 0] | (b[..., 1] << 8)
        return (word.unsqueeze(-1) >> (2 * torch.arange(8, device=b.device))) & 3
    return ((b.unsqueeze(2) >> (2 * torch.arange(4, device=b.device)).view(1, 1, 4, 1)) & 3).reshape(N, nb, 32)


# ---------------------------------------------------------------- the weight


@dataclass
class SparseWeight:
    """A sparse ``(N, K)`` weight in a registered format; treat it as immutable.

    ``values``: fp32 or int8, ``(N, Kp / 2)`` for 2:4 or ``(nnz,)`` for CSR; ``indices``: uint8 ``(N, Kp / 8)``
    for 2:4, int16 ``(nnz,)`` column indices (read as uint16) for CSR; ``row_ptr``: int64 ``(N + 1,)`` for CSR;
    ``scales``: fp32 ``(N,)`` for the int8 formats.
    """

    fmt: str
    values: torch.Tensor
    indices: torch.Tensor
    row_ptr: torch.Tensor | None
    scales: torch.Tensor | None
    N: int
    K: int

    def __post_init__(self) -> None:
        spec = sparse_format(self.fmt)
        problems = check_shapes(spec, self.N, self.K, self.values, self.indices, self.row_ptr, self.scales)
        if problems:
            raise ConfigError(f"SparseWeight {self.fmt} {self.N}x{self.K}: {problems}")

    @cached_property
    def spec(self) -> SparseFormatSpec:
        return sparse_format(self.fmt)

    @cached_property
    def Kp(self) -> int:
        return self.spec.padded_k(self.K)

    @property
    def nnz(self) -> int:
        """Stored values (2:4 stores 2 per group of 4, zeros included where a group kept fewer)."""
        return self.values.numel()

    @property
    def nbytes(self) -> int:
        """Bytes of everything stored: values, indices, row offsets, scales."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {"values": self.values, "indices": self.indices}
        if self.row_ptr is not None:
            out["row_ptr"] = self.row_ptr
        if self.scales is not None:
            out["scales"] = self.scales
        return out

    def dense(self) -> torch.Tensor:
        """The float32 ``(N, K)`` weight these bytes stand for (int8 values times their row scale)."""
        spec, N = self.spec, self.N
        vals = self.values.float()
        if spec.values == "int8" and self.scales is not None:
            vals = vals * (self.scales.float()[:, None] if spec.pattern == "2:4" else self._rows()[1])
        out = torch.zeros(N, self.Kp, dtype=torch.float32, device=self.values.device)
        if spec.pattern == "2:4":
            group, _, gpb = _order(spec)
            nb = self.Kp // (4 * gpb)
            pos = _unpack_positions(self.indices, spec, nb)  # (N, nb, values per block)
            blocks = torch.arange(nb, device=pos.device).view(1, nb, 1)
            col = 4 * gpb * blocks + 4 * group.to(pos.device).view(1, 1, -1) + pos
            out.scatter_add_(1, col.reshape(N, -1), vals.reshape(N, -1))
        else:
            rows, cols = self._rows()[0], self.indices.to(torch.int64) & 0xFFFF
            out.index_put_((rows, cols), vals, accumulate=True)
        return out[:, : self.K].contiguous()

    def _rows(self) -> tuple[torch.Tensor, torch.Tensor]:
        """CSR: the row of every stored value, and that row's scale (int8) or 1."""
        assert self.row_ptr is not None  # noqa: S101 - CSR formats always carry row_ptr (checked in __post_init__)
        # row of stored value i: the number of row ends <= i (a static length: traceable, unlike repeat_interleave)
        index = torch.arange(self.values.numel(), device=self.row_ptr.device)
        rows = torch.searchsorted(self.row_ptr[1:].contiguous(), index, right=True)
        scale = self.scales.float()[rows] if self.scales is not None else torch.ones(rows.numel(), device=rows.device)
        return rows, scale

    def metadata(self) -> dict[str, str]:
        return {"format": self.fmt, "N": str(self.N), "K": str(self.K), "layout_version": str(SPARSE_LAYOUT_VERSION)}

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> SparseWeight:
        if metadata.get("layout_version") != str(SPARSE_LAYOUT_VERSION):
            raise ConfigError(f"Sparse weight layout version {metadata.get('layout_version')!r} is not supported "
                              f"(this nnforge reads version {SPARSE_LAYOUT_VERSION}).")
        return cls(metadata["format"], tensors["values"], tensors["indices"], tensors.get("row_ptr"),
                   tensors.get("scales"), int(metadata["N"]), int(metadata["K"]))

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` through :func:`nnforge.compress.prune.kernels.sparse_mm`."""
        from nnforge.compress.prune.kernels._ops import sparse_mm

        return sparse_mm(x, self)


def check_shapes(spec: SparseFormatSpec, N: int, K: int, values: torch.Tensor, indices: torch.Tensor,
                 row_ptr: torch.Tensor | None, scales: torch.Tensor | None) -> str:
    """What is wrong with these tensors for the format (``""`` when nothing is): the kernels read raw memory."""
    if N < 1 or K < 1 or K > MAX_K:
        return f"N and K must be >= 1 and K <= {MAX_K} (got N={N}, K={K})"
    if (scales is None) != (spec.values == "fp32"):
        return "an int8 format needs fp32 scales (N,), an fp32 format none"
    if scales is not None and (scales.dtype != torch.float32 or tuple(scales.shape) != (N,)):
        return f"scales must be float32 ({N},), got {scales.dtype} {tuple(scales.shape)}"
    if values.dtype != spec.value_dtype:
        return f"values must be {spec.value_dtype}, got {values.dtype}"
    if spec.pattern == "2:4":
        kp = spec.padded_k(K)
        if tuple(values.shape) != (N, kp // 2) or indices.dtype != torch.uint8 or tuple(indices.shape) != (N, kp // 8):
            return (f"2:4 needs values ({N}, {kp // 2}) and uint8 indices ({N}, {kp // 8}); got "
                    f"{tuple(values.shape)} and {indices.dtype} {tuple(indices.shape)}")
        return "" if row_ptr is None else "2:4 has no row_ptr"
    if row_ptr is None or row_ptr.dtype != torch.int64 or tuple(row_ptr.shape) != (N + 1,):
        return f"CSR needs int64 row_ptr ({N + 1},)"
    if values.dim() != 1 or indices.dtype != torch.int16 or tuple(indices.shape) != tuple(values.shape):
        return f"CSR needs 1-d values and int16 indices of the same length; got {tuple(values.shape)}, " \
               f"{indices.dtype} {tuple(indices.shape)}"
    if not _is_fake(row_ptr) and (int(row_ptr[0]) != 0 or int(row_ptr[-1]) != values.numel()
                                         or bool((row_ptr[1:] < row_ptr[:-1]).any())):
        return f"row_ptr must rise from 0 to nnz={values.numel()}"
    if not _is_fake(indices) and indices.numel() and int((indices.to(torch.int32) & 0xFFFF).max()) >= K:
        return f"a column index is >= K={K} (the kernel would read outside x)"
    return ""


def _is_fake(t: torch.Tensor) -> bool:
    """A tensor whose values cannot be read here (fake or functional tensors while tracing, meta tensors)."""
    return type(t) is not torch.Tensor or t.is_meta


# ---------------------------------------------------------------- packing


def sparsify_weight(w: torch.Tensor, fmt: str) -> SparseWeight:
    """Store the non-zeros of a pruned float ``(N, K)`` weight in ``fmt``.

    2:4 formats need at most 2 non-zeros in every group of 4 consecutive weights of a row (prune with an N:M
    2:4 config first); a group with fewer stores zeros in its free slots. int8 formats round the kept values
    to int8 with one absmax scale per row.

    Raises:
        ConfigError: the weight is not 2-d, holds NaN/inf, has K > 65536, or is not 2:4 for a 2:4 format.
    """
    spec = sparse_format(fmt)
    if w.dim() != 2:
        raise ConfigError(f"sparsify_weight expects a (N, K) weight. Got shape {tuple(w.shape)} instead.")
    w = w.detach().float().cpu()
    N, K = w.shape
    if K > MAX_K:
        raise ConfigError(f"sparse formats take K <= {MAX_K} inputs (uint16 column indices); this weight has K={K}")
    if not torch.isfinite(w).all():
        raise ConfigError("sparsify_weight: the weight holds NaN or infinite values")
    absmax = w.abs().amax(dim=1)
    scales = None
    if spec.values == "int8":  # fp16-representable (so the dense int8 kernels can run the same codes and scales)
        scales = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax)).clamp(1e-7, 65504.0).half().float()

    def cast(v: torch.Tensor, rows: torch.Tensor | slice) -> torch.Tensor:
        if scales is None:
            return v.contiguous()
        s = scales[rows] if isinstance(rows, torch.Tensor) else scales[:, None]
        return torch.round(v / s).clamp_(-127, 127).to(torch.int8).contiguous()

    if spec.pattern == "unstructured":
        rows, cols = torch.nonzero(w, as_tuple=True)
        row_ptr = torch.zeros(N + 1, dtype=torch.int64)
        row_ptr[1:] = torch.cumsum(torch.bincount(rows, minlength=N), 0)
        c16 = torch.where(cols >= 32768, cols - 65536, cols).to(torch.int16)
        return SparseWeight(fmt, cast(w[rows, cols], rows), c16.contiguous(), row_ptr, scales, N, K)
    Kp = spec.padded_k(K)
    full = torch.zeros(N, Kp)
    full[:, :K] = w
    g = full.view(N, Kp // 4, 4)
    nz = g != 0
    too_dense = int((nz.sum(-1) > 2).sum())
    if too_dense:
        raise ConfigError(f"format {fmt!r} keeps 2 of every 4 weights, but {too_dense} groups of 4 in this weight hold "
                          "3 or 4 non-zeros: prune it 2:4 first (an N:M 2:4 pruning config)")
    # the 2 kept positions of each group: its non-zeros, then the lowest free positions; the lower one first
    free_rank = torch.cumsum(~nz, dim=-1, dtype=torch.int8)  # 1, 2, ... along each group's zeros
    keep = (nz | (free_rank <= (2 - nz.sum(-1, dtype=torch.int8)).unsqueeze(-1))).to(torch.uint8)
    first = keep.argmax(-1)
    pos = torch.stack([first, 3 - keep.flip(-1).argmax(-1)], -1)  # (N, Kp/4, 2)
    vals = torch.gather(g, 2, pos)
    group, slot, gpb = _order(spec)
    nb = Kp // (4 * gpb)
    sel = (group * 2 + slot).view(1, 1, -1)  # storage value -> (group, slot) inside a block
    vals_st = vals.view(N, nb, 2 * gpb).gather(2, sel.expand(N, nb, -1))
    pos_st = pos.view(N, nb, 2 * gpb).gather(2, sel.expand(N, nb, -1))
    return SparseWeight(fmt, cast(vals_st.reshape(N, Kp // 2), slice(None)), _pack_positions(pos_st, spec), None,
                        scales, N, K)
