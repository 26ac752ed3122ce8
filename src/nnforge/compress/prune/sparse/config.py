"""Config of sparse storage and execution: store pruned Linear layers in a sparse format, run them sparse where
measured faster."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from nnforge.config import Config, config_type

__all__ = ["SparsifyConfig", "SparseFormat"]


def _registered_sparse_format(fmt: str) -> str:
    from nnforge.compress.prune.kernels import SPARSE_FORMATS

    if fmt not in SPARSE_FORMATS:
        raise ValueError(SPARSE_FORMATS.unknown_message(fmt))
    return fmt


SparseFormat = Annotated[str, AfterValidator(_registered_sparse_format)]
"""The name of a registered sparse format (:data:`~nnforge.compress.prune.kernels.SPARSE_FORMATS`)."""


@config_type("sparsify")
class SparsifyConfig(Config):
    """Store the zeros of already pruned Linear layers sparsely, and execute each sparse only where measured faster.

    Kind ``"prune"``: the ``prune`` step and ``prune_`` accept it after a pruning config (it prunes nothing
    itself; it turns the zeros a pruning method left in dense weights into bytes and time saved).

    Args:
        fmt: ``auto`` picks ``2:4`` for a layer whose every group of 4 weights holds at most 2 non-zeros, else
            ``csr``; or a registered format for every layer (a layer that does not fit it is skipped, with why).
        values: with ``fmt="auto"``: ``fp32`` (exact) or ``int8`` (``2:4-int8`` / ``csr-int8``: one scale per
            row, activations rounded to int8 per row in the kernel, as the quantized int8 kernels do).
        min_sparsity: layers with fewer zeros than this stay dense (CSR costs 6 bytes per fp32 value: below
            one third zeros it is larger than the dense weight, and slower well before that).
        batch_sizes: the batch sizes (rows per call) at which sparse and dense execution are timed against each
            other; a call of ``m`` rows follows the verdict of the smallest measured batch size >= ``m``, and
            runs dense beyond the largest.
        execute: ``measured`` (sparse only where the verdict says faster), or ``sparse`` / ``dense`` always
            (no timing; the verdict says it was forced).
        repeats: interleaved timings per batch size and layer.
        plan: module name -> sparse format; ``apply`` fills it with what it chose (so a saved variant is
            rebuilt with the same layers), and a plan given by hand restricts sparsification to its modules.
    """

    fmt: Literal["auto"] | SparseFormat = "auto"
    values: Literal["fp32", "int8"] = "fp32"
    min_sparsity: float = Field(0.5, ge=0.0, le=1.0)
    batch_sizes: tuple[Annotated[int, Field(ge=1)], ...] = (1,)
    execute: Literal["measured", "sparse", "dense"] = "measured"
    repeats: int = Field(20, ge=4)
    plan: dict[str, SparseFormat] = Field(default_factory=dict)
