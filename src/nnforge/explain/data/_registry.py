"""The registry of data-attribution methods and the protocol each follows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch

from nnforge.registry import Registry

if TYPE_CHECKING:
    from nnforge.explain.data._config import DataAttributionConfig
    from nnforge.explain.data._grads import ExampleFn
    from nnforge.explain.data._types import Checkpoint, Examples

__all__ = ["DATA_ATTRIBUTORS", "DataAttributor"]


class DataAttributor(Protocol):
    """A data-attribution method. Registered by name in :data:`DATA_ATTRIBUTORS` as a class built without
    arguments; instances keep no state between calls.

    Both methods receive checked, non-empty examples and at least one checkpoint. ``loss_fn`` and ``margin_fn``
    take the outputs of a batch of one and its target and return a scalar; a method uses the one its authors
    define it on (TracIn the loss, TRAK the margin).
    """

    def scores(self, checkpoints: Sequence[Checkpoint], train: Examples, queries: Examples,
               config: DataAttributionConfig, *, loss_fn: ExampleFn, margin_fn: ExampleFn) -> torch.Tensor:
        """Influence of each training example on each query, (Q, N); positive = helpful."""
        ...

    def self_influence(self, checkpoints: Sequence[Checkpoint], train: Examples, config: DataAttributionConfig, *,
                       loss_fn: ExampleFn, margin_fn: ExampleFn) -> torch.Tensor:
        """Each training example's influence on itself, (N,): high for examples the model finds unusual
        (mislabeled, atypical)."""
        ...


DATA_ATTRIBUTORS: Registry[type[DataAttributor]] = Registry("data-attribution method")
