"""TracIn (Pruthi et al., 2020, "Estimating Training Data Influence by Tracing Gradient Descent"), TracInCP form.

The influence of training example ``z`` on query ``z'`` is summed over the checkpoints ``w_i`` of one training
run, each weighed by the learning rate ``η_i`` it trained with::

    TracInCP(z, z') = Σ_i η_i ∇ℓ(w_i, z) · ∇ℓ(w_i, z')          self-influence(z) = Σ_i η_i ‖∇ℓ(w_i, z)‖²

Positive: a gradient step on ``z`` lowers the loss of ``z'`` (a proponent); negative: it raises it (an
opponent). Gradients are exact unless ``proj_dim`` is set (the paper's TracInCP with random projections).
Memory: the query gradients (Q × d) and one chunk of training gradients at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nnforge.explain.data._config import DataAttributionConfig
from nnforge.explain.data._features import features, iter_features, projection_for
from nnforge.explain.data._grads import ExampleFn
from nnforge.explain.data._registry import DATA_ATTRIBUTORS
from nnforge.explain.data._types import Checkpoint, Examples

__all__ = ["TracIn"]


@DATA_ATTRIBUTORS.register("tracin")
class TracIn:
    """TracInCP over the given checkpoints with their learning rates (loss gradients, ``loss_fn``)."""

    def scores(self, checkpoints: Sequence[Checkpoint], train: Examples, queries: Examples,
               config: DataAttributionConfig, *, loss_fn: ExampleFn, margin_fn: ExampleFn) -> torch.Tensor:
        out = torch.zeros(len(queries), len(train), dtype=torch.float64)  # (Q, N)
        for i, checkpoint in enumerate(checkpoints):
            model = checkpoint.load()
            projection = projection_for(model, config, i, default_dim=None)
            query_grads = features(model, queries, loss_fn, config, projection).double()  # (Q, d)
            for lo, grads in iter_features(model, train, loss_fn, config, projection):  # (rows, d)
                out[:, lo : lo + len(grads)] += checkpoint.learning_rate * (query_grads @ grads.double().T)
        return out.float()

    def self_influence(self, checkpoints: Sequence[Checkpoint], train: Examples, config: DataAttributionConfig, *,
                       loss_fn: ExampleFn, margin_fn: ExampleFn) -> torch.Tensor:
        out = torch.zeros(len(train), dtype=torch.float64)  # (N,)
        for i, checkpoint in enumerate(checkpoints):
            model = checkpoint.load()
            projection = projection_for(model, config, i, default_dim=None)
            for lo, grads in iter_features(model, train, loss_fn, config, projection):
                out[lo : lo + len(grads)] += checkpoint.learning_rate * grads.double().pow(2).sum(1)
        return out.float()
