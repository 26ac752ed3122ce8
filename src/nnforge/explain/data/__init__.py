"""Training-data attribution: which training examples helped or harmed a prediction, and which look mislabeled.

>>> from nnforge.explain.data import DataAttributionConfig, attribute_data, checkpoints_from_run
>>> scores = attribute_data(checkpoints_from_run(model, "runs/digits/ckpt"), (x_train, y_train),
...                         (x_test[:5], y_test[:5]), DataAttributionConfig(method="tracin"))  # doctest: +SKIP
>>> scores.top(0, k=3).harmful  # doctest: +SKIP

Methods are registered by name in :data:`DATA_ATTRIBUTORS`, one module each (``tracin``, ``trak``); both run
on per-example gradients computed with ``torch.func`` (``vmap(grad(...))`` over chunks of examples), optionally
randomly projected. Adding a method is adding a module that registers a :class:`DataAttributor`.
"""

from __future__ import annotations

from nnforge.explain.data._api import attribute_data, self_influence
from nnforge.explain.data._config import DataAttributionConfig
from nnforge.explain.data._grads import (
    classification_margin,
    cross_entropy_loss,
    per_example_grads,
    select_parameters,
)
from nnforge.explain.data._preview import preview_example
from nnforge.explain.data._projection import RandomProjection
from nnforge.explain.data._registry import DATA_ATTRIBUTORS, DataAttributor
from nnforge.explain.data._text import TextClassifierTop
from nnforge.explain.data._types import Checkpoint, InfluenceScores, InfluentialExamples, checkpoints_from_run
from nnforge.registry import import_submodules

__all__ = ["DATA_ATTRIBUTORS", "DataAttributor", "DataAttributionConfig", "attribute_data", "self_influence",
           "InfluenceScores", "InfluentialExamples", "Checkpoint", "checkpoints_from_run", "per_example_grads",
           "select_parameters", "RandomProjection", "cross_entropy_loss", "classification_margin",
           "preview_example", "TextClassifierTop"]

import_submodules(__name__, __path__)  # registers every method of this folder (tracin, trak)
