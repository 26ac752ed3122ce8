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
from nnforge.registry import Registry

__all__ = ["FORMATS", "FormatSpec", "PackedWeight", "pack", "unpack", "padded_k", "LAYOUT_VERSION", "register_format",
           "format_spec", "format_of_layout"]

LAYOUT_VERSION = 1
GROUP_SIZES = (32, 64, 128, 256)


@dataclass(frozen=True)
class FormatSpec:
    """A registered weight format: how codes map to weights, ``w = scale * (amul * u - z)`` with ``z`` fixed
    when symmetric, and the facts the rest of nnforge reads instead of naming formats.

    Args:
        name: the public name (``fmt="int4"``).
        bits: storage bits per code (1, 2, 4 or 8: the packed layout and the kernels take these).
        z_symmetric: zero point (in code units) of the symmetric variant.
        amul: code multiplier (binary stores u in {0, 1} for w in {-1, +1}: w = 2u - 1).
        asymmetric_ok: a zero point per group may be stored (``symmetric=False``); otherwise symmetric only.
        code_bits: bits a code really needs when fewer than the storage ``bits`` (int3: 3 in a 4-bit slot).
        max_code: the largest code when not ``2**code_bits - 1`` (ternary: codes 0, 1, 2 in a 2-bit slot).
        absmean: round-to-nearest scales by the mean ``|w|`` (BitNet b1.58) instead of the absmax / min-max.
        layout_code: the format's code in a packed layer's saved ``layout`` buffer. Stable: files saved with
            it must keep loading, so a code is never reused or changed.
        grouped: group scales (``group_size`` 32-256) are supported besides one scale per row.
        onnx_bits: bits of the ``MatMulNBits`` codes it exports as (``None``: no ONNX export).
        error_bound: the relative Frobenius error ``||W - Ŵ|| / ||W||`` it stays below, checked by the
            conformance test: round to nearest on a standard normal 128 x 256 matrix (per-row or grouped
            scales, symmetric or not), and every layer any registered method or calibrator quantizes to it
            (GPTQ's weight error is the largest: 0.148 for int4 per row against RTN's 0.126).
        batch_rtol: the relative tolerance within which a quantized layer's output for one row is the same
            whatever the batch it comes in (issue 18, item 5).
    """

    name: str
    bits: int
    z_symmetric: float
    amul: float = 1.0
    asymmetric_ok: bool = False
    code_bits: int = 0
    max_code: int = 0
    absmean: bool = False
    layout_code: int = 0
    grouped: bool = True
    onnx_bits: int | None = None
    error_bound: float = 1.0
    batch_rtol: float = 1e-5

    @property
    def levels(self) -> int:
        """Number of distinct codes: ``2**code_bits`` (``2**bits`` unless the format says otherwise)."""
        return 1 << (self.code_bits or self.bits)

    @property
    def top_code(self) -> int:
        """The largest code the format uses."""
        return self.max_code or self.levels - 1

    @property
    def block(self) -> int:
        """Weights per 64-byte block: K is padded to a multiple of this."""
        return 64 * (8 // self.bits)


FORMATS: Registry[FormatSpec] = Registry("weight format")


def register_format(spec: FormatSpec) -> FormatSpec:
    """Register a weight format; its name and its saved ``layout_code`` must both be new.

    Raises:
        ConfigError: the storage bits are not 1, 2, 4 or 8, or the layout code is missing or taken.
    """
    if spec.bits not in (1, 2, 4, 8):
        raise ConfigError(f"format {spec.name!r}: storage bits must be 1, 2, 4 or 8 (the packed layout). "
                          f"Got {spec.bits} instead.")
    taken = {other.layout_code: other.name for other in FORMATS.values() if other.name != spec.name}
    if spec.layout_code < 1 or spec.layout_code in taken:
        raise ConfigError(f"format {spec.name!r}: layout_code must be a positive integer no other format uses "
                          f"(taken: {dict(sorted(taken.items()))}). Got {spec.layout_code} instead.")
    FORMATS.add(spec.name, spec)
    return spec


# the built-in formats; layout codes 1-6 are saved in files and never change
register_format(FormatSpec("int8", 8, 128.0, layout_code=1, onnx_bits=8, error_bound=0.012))
register_format(FormatSpec("int4", 4, 8.0, asymmetric_ok=True, layout_code=2, onnx_bits=4, error_bound=0.17))
# int3 codes 0..7 live in the int4 layout: the int4 kernels run them unchanged; 4 bits on disk
register_format(FormatSpec("int3", 4, 4.0, asymmetric_ok=True, code_bits=3, layout_code=3, onnx_bits=4,
                           error_bound=0.40))
register_format(FormatSpec("int2", 2, 2.0, asymmetric_ok=True, layout_code=4, onnx_bits=2, error_bound=0.70))
register_format(FormatSpec("ternary", 2, 1.0, max_code=2, absmean=True, layout_code=5, onnx_bits=2,
                           error_bound=0.62))
register_format(FormatSpec("binary", 1, 1.0, amul=2.0, absmean=True, layout_code=6, onnx_bits=2,
                           error_bound=0.72))


def format_spec(fmt: str) -> FormatSpec:
    """The :class:`FormatSpec` named ``fmt``, or a :class:`ConfigError` naming the choices."""
    if fmt in FORMATS:
        return FORMATS.get(fmt)
    raise ConfigError(f"The 'fmt' parameter must be one of {FORMATS.names()}. Got {fmt!r} instead.")


def format_of_layout(code: int) -> FormatSpec | None:
    """The format saved under ``layout_code`` (``None`` when no registered format has it)."""
    return next((spec for spec in FORMATS.values() if spec.layout_code == code), None)


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
