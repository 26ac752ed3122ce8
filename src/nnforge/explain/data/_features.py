"""Gradient features of one checkpoint: per-example gradients, randomly projected when the config says so."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from nnforge.explain.data._config import DataAttributionConfig
from nnforge.explain.data._grads import ExampleFn, iter_per_example_grads, select_parameters
from nnforge.explain.data._projection import RandomProjection
from nnforge.explain.data._types import Examples

__all__ = ["projection_for", "iter_features", "features"]


def projection_for(model: nn.Module, config: DataAttributionConfig, index: int,
                   default_dim: int | None) -> RandomProjection | None:
    """The projection of checkpoint ``index`` (its own seed, ``config.seed + index``), or None for exact gradients.

    ``config.proj_dim`` wins; otherwise ``default_dim``, and no projection when the gradients are already
    no longer than it (projecting up only adds noise).
    """
    dim_in = sum(p.numel() for p in select_parameters(model, config.parameters).values())
    dim = config.proj_dim
    if dim is None:
        if default_dim is None or dim_in <= default_dim:
            return None
        dim = default_dim
    return RandomProjection(dim_in, dim, kind=config.projection, seed=config.seed + index)


def iter_features(model: nn.Module, examples: Examples, fn: ExampleFn, config: DataAttributionConfig,
                  projection: RandomProjection | None) -> Iterator[tuple[int, torch.Tensor]]:
    """``(first_row, features)`` per chunk: the gradients of ``fn``, projected by ``projection`` when given."""
    for lo, grads in iter_per_example_grads(model, examples.inputs, examples.targets, fn,
                                            parameters=config.parameters, batch_size=config.batch_size):
        yield lo, (projection(grads) if projection is not None else grads).cpu()


def features(model: nn.Module, examples: Examples, fn: ExampleFn, config: DataAttributionConfig,
             projection: RandomProjection | None) -> torch.Tensor:
    """All of :func:`iter_features` as one (N, d) tensor."""
    return torch.cat([f for _, f in iter_features(model, examples, fn, config, projection)])
