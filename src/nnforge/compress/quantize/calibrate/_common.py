"""Shared pieces of the calibrators: argument checks and the per-group quantisation grid of each format.

Every calibrator works on a weight viewed as ``(N, ng, G)`` groups (``G = K`` for per-row scales: the
packed format's padding never holds real weights, so it is left out here and added by ``from_int``). The
grid of a format is what :func:`~nnforge.compress.quantize.kernels.quantize_weight` uses: integers
``q in [qmin, qmax]`` times a scale (symmetric formats, ternary, binary: ``q in {-1, +1}``), or unsigned
codes ``u in [0, levels - 1]`` minus an integer zero point (asymmetric). Scales are rounded to fp16 *before*
the codes are chosen, so the packed weight dequantises to exactly what a calibrator optimised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from nnforge.compress.quantize.kernels import FORMATS, PackedWeight, from_int, padded_k
from nnforge.compress.quantize.kernels._format import FormatSpec, format_spec
from nnforge.errors import ConfigError

FP16_MAX = 65504.0
TINY = 1e-8  # the smallest scale quantize_weight stores (it becomes 0 in fp16: the group dequantises to 0)


@dataclass(frozen=True)
class Grid:
    """The integer grid of one format and mode."""

    fmt: str
    spec: FormatSpec
    symmetric: bool
    levels: int

    @property
    def absmean(self) -> bool:
        """Scales by the mean ``|w|`` (ternary, binary: BitNet b1.58), not the absmax or min/max."""
        return self.spec.absmean

    @property
    def sign(self) -> bool:
        """A two-level symmetric grid (binary): values ``{-1, +1}``, rounded by sign."""
        return self.symmetric and self.spec.top_code == 1

    @property
    def qmin(self) -> int:
        """Smallest signed value (symmetric) or code (asymmetric)."""
        return -int(self.spec.z_symmetric) if self.symmetric else 0

    @property
    def qmax(self) -> int:
        """Largest signed value (symmetric) or code (asymmetric)."""
        top = self.spec.top_code
        return int(self.spec.amul * top - self.spec.z_symmetric) if self.symmetric else top

    def round(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (weights divided by the scale, plus the zero point if asymmetric) to the nearest grid value."""
        if self.sign:
            return torch.where(x >= 0, 1.0, -1.0)
        return torch.round(x).clamp_(self.qmin, self.qmax)


def make_grid(fmt: str, symmetric: bool) -> Grid:
    """The :class:`Grid` of ``fmt``; :class:`ConfigError` for an unknown format or an impossible mode."""
    spec = format_spec(fmt)
    if not symmetric and not spec.asymmetric_ok:
        ok = [name for name, other in FORMATS.items() if other.asymmetric_ok]
        raise ConfigError(f"Format {fmt!r} is symmetric only: symmetric=False needs one of {ok}. "
                          "Got symmetric=False instead.")
    return Grid(fmt, spec, symmetric, int(getattr(spec, "levels", 1 << spec.bits)))


def check_weight(w: object, name: str = "w") -> torch.Tensor:
    """A float32 copy of a 2-D floating weight, or a :class:`ConfigError`."""
    if not isinstance(w, torch.Tensor) or w.dim() != 2 or not w.is_floating_point():
        got = f"{w.dtype} tensor of shape {tuple(w.shape)}" if isinstance(w, torch.Tensor) else type(w).__name__
        raise ConfigError(f"The {name!r} parameter must be a 2-D floating-point tensor (N, K). Got {got} instead.")
    if not bool(torch.isfinite(w).all()):
        raise ConfigError(f"The {name!r} parameter holds NaN or infinite values: quantise a finite weight.")
    return w.detach().to(device="cpu", dtype=torch.float32).clone()


def check_group(K: int, bits: int, group_size: int | None) -> int:
    """The group length used here (``K`` for per-row scales); :class:`ConfigError` for a bad ``group_size``."""
    if isinstance(group_size, bool):
        raise ConfigError(f"The 'group_size' parameter must be one of (32, 64, 128, 256) or None. Got {group_size!r} instead.")
    padded_k(K, bits, group_size)  # raises ConfigError naming the allowed sizes / the divisibility rule
    return group_size if group_size is not None else K


def check_range(name: str, value: float, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> None:
    """:class:`ConfigError` unless ``lo <(=) value <(=) hi``."""
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value == value
    if ok:
        ok = (value > lo if lo_open else value >= lo) and (value < hi if hi_open else value <= hi)
    if not ok:
        rng = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(f"The {name!r} parameter must be a number in {rng}. Got {value!r} instead.")


def check_int(name: str, value: int, lo: int) -> None:
    """:class:`ConfigError` unless ``value`` is an integer ``>= lo``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        raise ConfigError(f"The {name!r} parameter must be an integer >= {lo}. Got {value!r} instead.")


def fp16(s: torch.Tensor) -> torch.Tensor:
    """Scales as the packed weight stores them: rounded to fp16 (and kept finite), back in float32."""
    return s.clamp(max=FP16_MAX).to(torch.float16).to(torch.float32)


def safe(s: torch.Tensor) -> torch.Tensor:
    """A divisor for ``w / s``: a zero scale (all-zero group) dequantises to 0 whatever the codes."""
    return torch.where(s > 0, s, torch.ones_like(s))


def rtn_params(wg: torch.Tensor, grid: Grid) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scales ``(..., 1)`` (fp16-rounded) and zero points (asymmetric, integer-valued) as RTN computes them.

    Symmetric: ``absmax / (z - 1)`` with ``z`` the fixed zero point (``absmax / z`` for 2-bit); asymmetric:
    ``(max - min) / (levels - 1)`` with the range widened to contain 0; ternary and binary: ``mean |w|``.
    """
    if grid.absmean:
        return fp16(wg.abs().mean(-1, keepdim=True).clamp_min(TINY)), None
    if grid.symmetric:
        z = int(grid.spec.z_symmetric)
        return fp16((wg.abs().amax(-1, keepdim=True) / (z - 1 if grid.levels > 4 else z)).clamp_min(TINY)), None
    lo = wg.amin(-1, keepdim=True).clamp(max=0)
    hi = wg.amax(-1, keepdim=True).clamp(min=0)
    s = fp16(((hi - lo) / (grid.levels - 1)).clamp_min(TINY))
    return s, torch.round(-lo / safe(s)).clamp(0, grid.levels - 1)


def quantize(wg: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, grid: Grid) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid values ``q`` (signed, or codes when ``z`` is given) and the dequantised weight, for scales ``s``."""
    if z is None:
        q = grid.round(wg / safe(s))
        return q, q * s
    q = grid.round(wg / safe(s) + z)
    return q, (q - z) * s


def pack_groups(q: torch.Tensor, s: torch.Tensor, z: torch.Tensor | None, grid: Grid,
                group_size: int | None) -> PackedWeight:
    """A :class:`PackedWeight` from grouped ``q (N, ng, G)``, scales and zero points ``(N, ng, 1)``."""
    N = q.shape[0]
    return from_int(q.reshape(N, -1).round().to(torch.int32), s.reshape(N, -1).to(torch.float16), grid.fmt,
                    group_size, None if z is None else z.reshape(N, -1).to(torch.uint8))


def unpack_groups(pw: PackedWeight, grid: Grid, G: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``q``, scales and zero points of a packed weight, grouped ``(N, ng, G)`` / ``(N, ng, 1)`` as above."""
    N, K = pw.N, pw.K
    ng = K // G
    u = pw.codes().to(torch.float32).view(N, ng, G)
    s = pw.scales[:, :ng].to(torch.float32).unsqueeze(-1)
    if pw.zeros is not None:
        return u, s, pw.zeros[:, :ng].to(torch.float32).unsqueeze(-1)
    return grid.spec.amul * u - grid.spec.z_symmetric, s, None


def group_sq_err(wg: torch.Tensor, deq: torch.Tensor) -> torch.Tensor:
    """Squared reconstruction error of each group, ``(N, ng, 1)``."""
    return (wg - deq).pow(2).sum(-1, keepdim=True)
