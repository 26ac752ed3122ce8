"""The library API: :func:`attribute_data` and :func:`self_influence`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from nnforge.errors import ConfigError
from nnforge.explain.data._config import DataAttributionConfig
from nnforge.explain.data._grads import ExampleFn, classification_margin, cross_entropy_loss
from nnforge.explain.data._registry import DATA_ATTRIBUTORS
from nnforge.explain.data._types import Checkpoint, Examples, InfluenceScores, as_examples

__all__ = ["attribute_data", "self_influence", "Models"]

Models = nn.Module | Checkpoint | Sequence[nn.Module | Checkpoint]


def _checkpoints(models: Any) -> list[Checkpoint]:
    items = [models] if isinstance(models, nn.Module | Checkpoint) else models
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise ConfigError("models must be a torch.nn.Module, a Checkpoint, or a list of them "
                          f"(checkpoints_from_run(model, folder) reads a training run's); got {type(models).__name__}")
    out = [c if isinstance(c, Checkpoint) else Checkpoint(c) if isinstance(c, nn.Module) else None for c in items]
    if not out:
        raise ConfigError("models is empty: give at least one model or checkpoint")
    bad = [i for i, c in enumerate(out) if c is None]
    if bad:
        raise ConfigError(f"models[{bad[0]}] is a {type(items[bad[0]]).__name__}; expected a torch.nn.Module or a "
                          "Checkpoint")
    return [c for c in out if c is not None]


def _same_inputs(train: Examples, queries: Examples) -> None:
    """Queries must look like training examples: the same input kind, keys and per-example shapes."""
    a, b = train.inputs, queries.inputs
    if isinstance(a, torch.Tensor) != isinstance(b, torch.Tensor):
        raise ConfigError("train_set and queries must both have tensor inputs or both dicts of tensors")
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape[1:] != b.shape[1:]:
            raise ConfigError(f"queries inputs have example shape {tuple(b.shape[1:])}, train_set inputs "
                              f"{tuple(a.shape[1:])}; they must match")
    elif not isinstance(a, torch.Tensor) and not isinstance(b, torch.Tensor) and set(a) != set(b):
        raise ConfigError(f"queries inputs have keys {sorted(b)}, train_set inputs {sorted(a)}; they must match")


def attribute_data(models: Models, train_set: Any, queries: Any, config: DataAttributionConfig | None = None, *,
                   loss_fn: ExampleFn | None = None, margin_fn: ExampleFn | None = None) -> InfluenceScores:
    """Score how much each training example helped or harmed each query's prediction.

    Args:
        models: the trained model, several (an ensemble), or :class:`Checkpoint` s
            (``checkpoints_from_run(model, checkpoint_dir)`` reads those :func:`nnforge.train.fit` wrote).
        train_set: ``(inputs, targets)``, inputs a tensor (N, ...) or a dict of tensors (N, ...).
        queries: ``(inputs, targets)`` of the predictions to explain; the target is the label whose
            prediction is explained (the true label, or the predicted one).
        config: the method and its settings (default: TRAK).
        loss_fn: TracIn's loss of a batch of one ``(outputs, targets) -> scalar`` (default: cross-entropy).
        margin_fn: TRAK's model output of a batch of one (default: ``log(p / (1 - p))`` of the target class).

    Returns:
        :class:`InfluenceScores` (Q × N); ``.top(query, k)`` lists the most helpful and harmful examples.

    Raises:
        DataError: empty examples, or inputs and targets of different lengths.
        ConfigError: an unknown method, mismatched train and query inputs, no models.
    """
    config = config or DataAttributionConfig()
    train, query = as_examples(train_set, "train_set"), as_examples(queries, "queries")
    _same_inputs(train, query)
    method = DATA_ATTRIBUTORS.get(config.method, where="DataAttributionConfig.method")()
    scores = method.scores(_checkpoints(models), train, query, config, loss_fn=loss_fn or cross_entropy_loss,
                           margin_fn=margin_fn or classification_margin)
    return InfluenceScores(scores, config.method, config)


def self_influence(models: Models, train_set: Any, config: DataAttributionConfig | None = None, *,
                   loss_fn: ExampleFn | None = None, margin_fn: ExampleFn | None = None) -> torch.Tensor:
    """Each training example's influence on itself, (N,): rank it descending to find likely mislabeled examples.

    Arguments as :func:`attribute_data`. TracIn's is ``Σ_i η_i ‖∇ℓ(w_i, z)‖²`` over the checkpoints (use a
    run's checkpoints: an example the model fits only late, or never, keeps a large gradient); TRAK's is each
    example's leverage in the projected-gradient kernel times ``1 − p``.
    """
    config = config or DataAttributionConfig()
    train = as_examples(train_set, "train_set")
    method = DATA_ATTRIBUTORS.get(config.method, where="DataAttributionConfig.method")()
    return method.self_influence(_checkpoints(models), train, config, loss_fn=loss_fn or cross_entropy_loss,
                                 margin_fn=margin_fn or classification_margin)
