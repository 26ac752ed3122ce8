"""TRAK (Park et al., 2023, "TRAK: Attributing Model Behavior at Scale"), written here on ``torch.func``.

For each model (independently trained models, or checkpoints of one run) with weights ``θ``:

- ``Φ`` (N × k): the gradients of the training examples' margins ``f(z; θ) = log(p / (1 − p))`` of their
  targets, randomly projected to ``k`` dimensions (``φ(z) = Pᵀ∇_θ f(z; θ)``);
- ``Q`` (N): the reweighting ``1 − p`` of each training example's target (the loss's derivative in ``f``);
- a query's row: ``φ(z')ᵀ (ΦᵀΦ + λI)⁻¹ Φᵀ``.

The rows are averaged over the models, then multiplied by the average ``Q`` (as the paper and its reference
code do). Self-influence is the diagonal: the leverage ``φ(z)ᵀ(ΦᵀΦ + λI)⁻¹φ(z)`` times ``Q``. When
``k > N`` the same solve runs in the N × N form ``Φᵀ(ΦΦᵀ + λI)⁻¹`` (the push-through identity).

Why not the authors' ``traker`` package (0.3.2)? It runs on a CPU (``BasicProjector``), but it writes its
features and scores to memory-mapped files in a ``save_dir``, knows a fixed set of tasks (its text task expects
Hugging Face sequence-classification models), and would add a dependency to nnforge's lean core; the method
itself is a few lines on top of the per-example gradients this package computes anyway. The LDS benchmark
(``benchmarks/explain/lds.py``) runs ``traker`` beside this implementation when it is installed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from nnforge.errors import DataError
from nnforge.explain.data._config import TRAK_DEFAULT_PROJ_DIM, DataAttributionConfig
from nnforge.explain.data._features import features, projection_for
from nnforge.explain.data._grads import ExampleFn, model_outputs
from nnforge.explain.data._projection import RandomProjection
from nnforge.explain.data._registry import DATA_ATTRIBUTORS
from nnforge.explain.data._types import Checkpoint, Examples

__all__ = ["TRAK"]


def _ridge(phi: torch.Tensor, damping: float) -> float:
    """λ: ``damping`` times the mean diagonal entry of ΦᵀΦ (scale-free, so one setting fits every model)."""
    return damping * float(phi.pow(2).sum()) / phi.shape[1]


def _solve(matrix: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    try:
        return torch.linalg.solve(matrix, rhs)
    except RuntimeError:  # torch.linalg.LinAlgError: a singular kernel
        raise DataError("TRAK's kernel ΦᵀΦ is singular (duplicate or zero gradients, no damping); set "
                        "DataAttributionConfig(damping=...) > 0 or a smaller proj_dim") from None


def _kernel_rows(phi: torch.Tensor, query_phi: torch.Tensor, damping: float) -> torch.Tensor:
    """``query_phi (ΦᵀΦ + λI)⁻¹ Φᵀ``: (Q, k), (N, k) → (Q, N), in float64."""
    phi, query_phi = phi.double(), query_phi.double()
    lam = _ridge(phi, damping)
    n, k = phi.shape
    if k <= n:
        gram = phi.T @ phi + lam * torch.eye(k, dtype=phi.dtype)  # (k, k)
        return query_phi @ _solve(gram, phi.T)
    gram = phi @ phi.T + lam * torch.eye(n, dtype=phi.dtype)  # (N, N)
    return _solve(gram, phi @ query_phi.T).T  # the gram matrix is symmetric


def _leverage(phi: torch.Tensor, damping: float) -> torch.Tensor:
    """``diag(Φ (ΦᵀΦ + λI)⁻¹ Φᵀ)``, (N,), in float64."""
    phi = phi.double()
    lam = _ridge(phi, damping)
    n, k = phi.shape
    if k <= n:
        gram = phi.T @ phi + lam * torch.eye(k, dtype=phi.dtype)
        return (phi * _solve(gram, phi.T).T).sum(1)
    kernel = phi @ phi.T
    return torch.diagonal(_solve(kernel + lam * torch.eye(n, dtype=phi.dtype), kernel))


@DATA_ATTRIBUTORS.register("trak")
class TRAK:
    """TRAK with projected margin gradients, averaged over the given models or checkpoints."""

    def _train_side(self, checkpoint: Checkpoint, index: int, train: Examples, config: DataAttributionConfig,
                    margin_fn: ExampleFn) -> tuple[nn.Module, RandomProjection | None, torch.Tensor, torch.Tensor]:
        model = checkpoint.load()
        projection = projection_for(model, config, index, default_dim=TRAK_DEFAULT_PROJ_DIM)
        phi = features(model, train, margin_fn, config, projection)  # (N, k)
        margins = model_outputs(model, train.inputs, train.targets, margin_fn)  # (N,)
        return model, projection, phi, 1.0 - torch.sigmoid(margins.double())

    def scores(self, checkpoints: Sequence[Checkpoint], train: Examples, queries: Examples,
               config: DataAttributionConfig, *, loss_fn: ExampleFn, margin_fn: ExampleFn) -> torch.Tensor:
        rows = torch.zeros(len(queries), len(train), dtype=torch.float64)  # (Q, N)
        reweight = torch.zeros(len(train), dtype=torch.float64)  # (N,)
        for i, checkpoint in enumerate(checkpoints):
            model, projection, phi, q = self._train_side(checkpoint, i, train, config, margin_fn)
            query_phi = features(model, queries, margin_fn, config, projection)  # (Q, k)
            rows += _kernel_rows(phi, query_phi, config.damping)
            reweight += q
        rows /= len(checkpoints)
        if config.reweight:
            rows *= reweight / len(checkpoints)
        return rows.float()

    def self_influence(self, checkpoints: Sequence[Checkpoint], train: Examples, config: DataAttributionConfig, *,
                       loss_fn: ExampleFn, margin_fn: ExampleFn) -> torch.Tensor:
        leverage = torch.zeros(len(train), dtype=torch.float64)
        reweight = torch.zeros(len(train), dtype=torch.float64)
        for i, checkpoint in enumerate(checkpoints):
            _, _, phi, q = self._train_side(checkpoint, i, train, config, margin_fn)
            leverage += _leverage(phi, config.damping)
            reweight += q
        out = leverage / len(checkpoints)
        if config.reweight:
            out *= reweight / len(checkpoints)
        return out.float()
