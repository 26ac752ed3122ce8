"""Seeded random projections of gradients, generated block by block so a large matrix never sits in memory.

A gradient ``g`` of ``dim_in`` entries becomes ``g @ R`` of ``dim_out`` entries, with ``R`` filled with
``±1/sqrt(dim_out)`` (Rademacher) or ``N(0, 1/dim_out)`` (Gaussian) entries: ``E[<g R, h R>] = <g, h>``
(Johnson–Lindenstrauss), with a relative error of about ``sqrt(2 / dim_out)`` per inner product.

``R`` is cut into blocks of 1024 rows; block ``b`` is drawn from its own generator seeded from ``(seed, b)``, so the
same seed gives the same matrix on every machine and in every chunking, and a projection of millions of
parameters needs one block at a time. Blocks are kept in memory up to ``cache_mb``, regenerated otherwise.
"""

from __future__ import annotations

from typing import Literal

import torch

from nnforge.errors import ConfigError, DataError

__all__ = ["RandomProjection"]

BLOCK_ROWS = 1024  # rows of R per block and generator: fixed, so R depends only on (seed, dims, kind)


class RandomProjection:
    """A seeded ``dim_in → dim_out`` random projection that preserves inner products in expectation.

    Args:
        dim_in: the length of the vectors to project (the number of selected parameters).
        dim_out: the projected length.
        kind: ``"rademacher"`` (±1 entries, the cheaper to draw) or ``"gaussian"``.
        seed: the seed of the whole matrix.
        cache_mb: keep generated blocks up to this many MB (10^6 bytes); larger matrices are regenerated per call.
    """

    def __init__(self, dim_in: int, dim_out: int, *, kind: Literal["rademacher", "gaussian"] = "rademacher",
                 seed: int = 0, cache_mb: float = 512.0) -> None:
        for name, value in (("dim_in", dim_in), ("dim_out", dim_out)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"The {name!r} parameter of RandomProjection must be an int >= 1. Got {value!r} "
                                  "instead.")
        if kind not in ("rademacher", "gaussian"):
            raise ConfigError(f"The 'kind' parameter of RandomProjection must be 'rademacher' or 'gaussian'. "
                              f"Got {kind!r} instead.")
        self.dim_in, self.dim_out, self.kind, self.seed = dim_in, dim_out, kind, seed
        self.block_rows = BLOCK_ROWS
        self._cache_blocks = int(cache_mb * 1e6 // (4 * dim_out * self.block_rows))
        self._blocks: dict[int, torch.Tensor] = {}
        self._whole: torch.Tensor | None = None

    def _block(self, b: int) -> torch.Tensor:
        """Rows ``[b * block_rows, …)`` of R, (rows, dim_out) float32 on the CPU."""
        if self._whole is not None:
            return self._whole[b * self.block_rows : (b + 1) * self.block_rows]
        cached = self._blocks.get(b)
        if cached is not None:
            return cached
        rows = min(self.block_rows, self.dim_in - b * self.block_rows)
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + b) % 2**63)
        if self.kind == "gaussian":
            block = torch.randn(rows, self.dim_out, generator=gen)
        else:
            block = torch.randint(0, 2, (rows, self.dim_out), generator=gen, dtype=torch.int8).float() * 2 - 1
        block /= self.dim_out**0.5
        if len(self._blocks) < self._cache_blocks:
            self._blocks[b] = block
        return block

    def __call__(self, vectors: torch.Tensor) -> torch.Tensor:
        """Project ``vectors`` (B, dim_in) → (B, dim_out), in float32 on the vectors' device."""
        if vectors.dim() != 2 or vectors.shape[1] != self.dim_in:
            raise DataError(f"RandomProjection expects vectors of shape (B, {self.dim_in}); got {tuple(vectors.shape)}")
        blocks = -(-self.dim_in // self.block_rows)
        if blocks <= self._cache_blocks:  # small enough to keep whole: one matrix product
            if self._whole is None:
                self._whole = torch.cat([self._block(b) for b in range(blocks)])
                self._blocks.clear()
            return vectors.float() @ self._whole.to(vectors.device)
        out = torch.zeros(vectors.shape[0], self.dim_out, device=vectors.device)
        for b in range(blocks):
            lo = b * self.block_rows
            out += vectors[:, lo : lo + self.block_rows].float() @ self._block(b).to(vectors.device)
        return out

    def matrix(self) -> torch.Tensor:
        """The whole matrix R, (dim_in, dim_out): for tests and small problems."""
        return torch.cat([self._block(b) for b in range(-(-self.dim_in // self.block_rows))])
