"""Packed low-bit weight formats: the stable on-disk layout, pack/unpack, and :class:`PackedWeight`.

Layout version 1 (docs/kernels.md is the full description). Every weight is an unsigned code
``u in [0, 2**bits)``; a row of ``Kp`` codes (``K`` padded with zero codes) is stored as 64-byte blocks,
block ``b`` covering ``64 * P`` weights (``P = 8 // bits``), byte ``j`` holding the code of weight
``b * 64 * P + p * 64 + j`` in bits ``[p * bits, (p + 1) * bits)``. Scales are fp16 ``(N, Kp // G)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from nnforge.errors import ConfigError

__all__ = ["FORMATS", "FormatSpec", "PackedWeight", "pack", "unpack", "padded_k", "LAYOUT_VERSION"]

LAYOUT_VERSION = 1
GROUP_SIZES = (32, 64, 128, 256)


@dataclass(frozen=True)
class FormatSpec:
    """How a format maps codes to weights: ``w = scale * (amul * u - z)`` with ``z`` fixed when symmetric."""

    name: str
    bits: int
    z_symmetric: float  # zero point (in code units) of the symmetric variant
    amul: float = 1.0  # binary stores u in {0, 1} for w in {-1, +1}: w = 2u - 1
    asymmetric_ok: bool = False
    code_bits: int = 0  # bits a code really needs when fewer than the storage ``bits`` (int3: 3 in a 4-bit slot)

    @property
    def levels(self) -> int:
        """Number of distinct codes: ``2**code_bits`` (``2**bits`` unless the format says otherwise)."""
        return 1 << (self.code_bits or self.bits)

    @property
    def block(self) -> int:
        """Weights per 64-byte block: K is padded to a multiple of this."""
        return 64 * (8 // self.bits)


FORMATS: dict[str, FormatSpec] = {
    "int8": FormatSpec("int8", 8, 128.0),
    "int4": FormatSpec("int4", 4, 8.0, asymmetric_ok=True),
    # int3 codes 0..7 live in the int4 layout: the int4 kernels run them unchanged; 4 bits on disk
    "int3": FormatSpec("int3", 4, 4.0, asymmetric_ok=True, code_bits=3),
    "int2": FormatSpec("int2", 2, 2.0, asymmetric_ok=True),
    "ternary": FormatSpec("ternary", 2, 1.0),
    "binary": FormatSpec("binary", 1, 1.0, amul=2.0),
}


def format_spec(fmt: str) -> FormatSpec:
    """The :class:`FormatSpec` named ``fmt``, or a :class:`ConfigError` naming the choices."""
    try:
        return FORMATS[fmt]
    except KeyError:
        raise ConfigError(f"The 'fmt' parameter must be one of {sorted(FORMATS)}. Got {fmt!r} instead.") from None


def padded_k(K: int, bits: int, group_size: int | None) -> int:
    """K rounded up to whole 64-byte blocks and whole groups (per-row scales: ``group_size=None``)."""
    if bits not in (1, 2, 4, 8):
        raise ConfigError(f"The 'bits' parameter must be one of 1, 2, 4, 8. Got {bits!r} instead.")
    step = 64 * (8 // bits)
    if group_size is not None:
        if group_size not in GROUP_SIZES:
            raise ConfigError(f"The 'group_size' parameter must be one of {GROUP_SIZES} or None. Got {group_size!r} instead.")
        if K % group_size:
            raise ConfigError(f"K={K} is not a multiple of group_size={group_size}: pick a group size that divides K "
                              "or use per-row scales (group_size=None).")
        step = max(step, group_size)
    return -(-K // step) * step


def pack(codes: torch.Tensor, bits: int, group_size: int | None = None) -> torch.Tensor:
    """Pack unsigned codes ``(N, K)`` in ``[0, 2**bits)`` into uint8 ``(N, Kp * bits // 8)`` (layout v1).

    K is padded with zero codes to :func:`padded_k`; :func:`unpack` with the original K inverts it exactly.
    """
    if codes.dim() != 2:
        raise ConfigError(f"pack expects codes of shape (N, K). Got shape {tuple(codes.shape)} instead.")
    N, K = codes.shape
    Kp = padded_k(K, bits, group_size)
    if codes.numel():
        lo, hi = int(codes.min()), int(codes.max())
        if lo < 0 or hi >= 1 << bits:
            raise ConfigError(f"pack expects codes in [0, {1 << bits}) for bits={bits}. Got values in [{lo}, {hi}] instead.")
    P = 8 // bits
    full = torch.zeros(N, Kp, dtype=torch.uint8)
    full[:, :K] = codes
    planes = full.view(N, Kp // (64 * P), P, 64)  # (N, blocks, plane, byte)
    out = planes[:, :, 0].clone()
    for p in range(1, P):
        out |= planes[:, :, p] << (p * bits)
    return out.reshape(N, Kp * bits // 8)


def unpack(packed: torch.Tensor, bits: int, K: int) -> torch.Tensor:
    """Unsigned uint8 codes ``(N, K)`` from a packed ``(N, Kp * bits // 8)`` tensor (inverse of :func:`pack`)."""
    N, nbytes = packed.shape
    P = 8 // bits
    Kp = nbytes * P
    planes = packed.view(N, nbytes // 64, 1, 64)
    shifts = (torch.arange(P, dtype=torch.uint8, device=packed.device) * bits).view(1, 1, P, 1)
    codes = (planes >> shifts) & ((1 << bits) - 1)  # (N, blocks, plane, byte)
    return codes.reshape(N, Kp)[:, :K].contiguous()


@dataclass
class PackedWeight:
    """A packed ``(N, K)`` weight: codes, fp16 group scales, optional uint8 zero points, and metadata.

    ``data`` uint8 ``(N, Kp * bits // 8)``; ``scales`` float16 ``(N, Kp // G)``; ``zeros`` uint8 of the same
    shape or ``None`` (symmetric: the format's fixed zero point). ``group_size`` is ``None`` for one scale per
    row. Groups wholly inside the padding have scale 0. Treat it as immutable (shape facts are cached).
    """

    fmt: str
    data: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    N: int
    K: int
    group_size: int | None

    def __post_init__(self) -> None:
        spec = format_spec(self.fmt)
        Kp = padded_k(self.K, spec.bits, self.group_size)
        ng = Kp // self.group if self.group_size is not None else 1
        if self.data.dtype != torch.uint8 or tuple(self.data.shape) != (self.N, Kp * spec.bits // 8):
            raise ConfigError(f"PackedWeight data must be uint8 of shape {(self.N, Kp * spec.bits // 8)}. "
                              f"Got {self.data.dtype} {tuple(self.data.shape)} instead.")
        if self.scales.dtype != torch.float16 or tuple(self.scales.shape) != (self.N, ng):
            raise ConfigError(f"PackedWeight scales must be float16 of shape {(self.N, ng)}. "
                              f"Got {self.scales.dtype} {tuple(self.scales.shape)} instead.")
        if self.zeros is not None:
            if not spec.asymmetric_ok:
                raise ConfigError(f"Format {self.fmt!r} is symmetric only: zeros must be None.")
            if self.zeros.dtype != torch.uint8 or tuple(self.zeros.shape) != (self.N, ng):
                raise ConfigError(f"PackedWeight zeros must be uint8 of shape {(self.N, ng)}. "
                                  f"Got {self.zeros.dtype} {tuple(self.zeros.shape)} instead.")

    @cached_property
    def spec(self) -> FormatSpec:
        return format_spec(self.fmt)

    @cached_property
    def Kp(self) -> int:
        """K padded to whole blocks and groups."""
        return padded_k(self.K, self.spec.bits, self.group_size)

    @cached_property
    def group(self) -> int:
        """The group length the kernel uses (``Kp`` for per-row scales)."""
        return self.group_size if self.group_size is not None else self.Kp

    @property
    def nbytes(self) -> int:
        """Bytes of codes, scales and zero points."""
        z = self.zeros.numel() if self.zeros is not None else 0
        return self.data.numel() + 2 * self.scales.numel() + z

    def codes(self) -> torch.Tensor:
        """The unsigned codes ``(N, K)`` as uint8."""
        return unpack(self.data, self.spec.bits, self.K)

    def dequantize(self) -> torch.Tensor:
        """The float32 weight ``(N, K)`` these bits stand for."""
        spec, G = self.spec, self.group
        ng = self.scales.shape[1]
        u = unpack(self.data, spec.bits, self.Kp).float().view(self.N, ng, G)
        z = (self.zeros.float() if self.zeros is not None
             else torch.full((self.N, ng), spec.z_symmetric, device=self.data.device))
        w = (spec.amul * u - z[..., None]) * self.scales.float()[..., None]
        return w.reshape(self.N, self.Kp)[:, : self.K].contiguous()

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors for safetensors; :meth:`metadata` holds the rest (all strings)."""
        out = {"data": self.data, "scales": self.scales}
        if self.zeros is not None:
            out["zeros"] = self.zeros
        return out

    def metadata(self) -> dict[str, str]:
        """String metadata for a safetensors header (format, shape, group size, layout version)."""
        return {"format": self.fmt, "N": str(self.N), "K": str(self.K), "layout_version": str(LAYOUT_VERSION),
                "group_size": "row" if self.group_size is None else str(self.group_size)}

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> PackedWeight:
        """Rebuild from :meth:`state_dict` and :meth:`metadata`; refuses an unknown layout version."""
        if metadata.get("layout_version") != str(LAYOUT_VERSION):
            raise ConfigError(f"Packed weight layout version {metadata.get('layout_version')!r} is not supported "
                              f"(this nnforge reads version {LAYOUT_VERSION}).")
        gs = metadata["group_size"]
        return cls(metadata["format"], tensors["data"], tensors["scales"], tensors.get("zeros"),
                   int(metadata["N"]), int(metadata["K"]), None if gs == "row" else int(gs))

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ W.T`` through :func:`nnforge.compress.quantize.kernels.qgemv`."""
        from nnforge.compress.quantize.kernels._dispatch import qgemv

        return qgemv(x, self)
