"""What the evaluation steps (``evaluate``, ``gate``, ``baselines``) read: a named split of the recipe's data, the
model's task, and the checks their ``preflight`` makes before a run folder exists.

Text data reach steps as splits by role (``ctx.data["train" | "val" | "test"]``, the recipe's ``data.*_split``
names); array data (images, tables, any tensors) as ``ctx.data["dataset"]``, an
:class:`~nnforge.data.ArrayClassification` whose splits have their own names (``train``, ``test``, …).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from nnforge.errors import ConfigError, DataError

__all__ = ["CLASSIFICATION_TASKS", "TEXT_TASK", "split_names", "read_split", "recipe_task", "default_split",
           "check_split", "check_classifier", "is_text"]

TEXT_TASK = "text-classification"
CLASSIFICATION_TASKS = ("text-classification", "image-classification", "tabular-classification",
                        "tensor-classification")


def recipe_task(recipe_or_source: Any) -> str:
    """The task of a recipe's model (its registered architecture's, else a pretrained text classifier's)."""
    from nnforge.models import task_of

    source = recipe_or_source
    if hasattr(source, "model"):  # a Recipe
        source = source.model.model_dump(exclude_none=True)
    return task_of(source.get("architecture")) if isinstance(source, dict) else TEXT_TASK


def is_text(data: dict[str, Any]) -> bool:
    return "dataset" not in data


def _roles(recipe: Any) -> dict[str, str]:
    """Split name → the role under which text data reach the steps."""
    spec = recipe.data
    roles = {spec.train_split: "train", spec.test_split: "test"}
    if spec.val_split:
        roles[spec.val_split] = "val"
    return roles


def split_names(recipe: Any, data: dict[str, Any]) -> list[str]:
    """The split names the steps can read from this data."""
    if is_text(data):
        return sorted(name for name, role in _roles(recipe).items() if role in data)
    return sorted(data["dataset"].splits)


def default_split(recipe: Any) -> str:
    return str(recipe.data.test_split)


def check_split(step: str, what: str, split: str, recipe: Any, data: dict[str, Any]) -> None:
    """Refuse a split the data do not have, naming the ones they do."""
    have = split_names(recipe, data)
    if split not in have:
        raise ConfigError(f"{step}: {what} {split!r}, but the data ({recipe.data.dataset!r}) have the splits "
                          f"{', '.join(have) or 'none'}; name one of them")


def check_classifier(step: str, task: str, data: dict[str, Any]) -> None:
    """Refuse a model whose task the step cannot evaluate (a character LM), or text/array data that do not fit it."""
    if task not in CLASSIFICATION_TASKS:
        raise ConfigError(f"{step}: the model's task is {task!r}; this step evaluates classifiers "
                          f"({', '.join(CLASSIFICATION_TASKS)}). A char-lm recipe reports its validation loss "
                          "from the train step; remove this step")
    if (task == TEXT_TASK) != is_text(data):
        kind = "text" if is_text(data) else "array"
        raise ConfigError(f"{step}: the model's task is {task!r} but the data are {kind} data")


def read_split(ctx_data: dict[str, Any], recipe: Any, split: str) -> Any:
    """A text split (``TextSplit``) or ``(x, y)`` tensors of array data, by the split's name.

    Raises:
        ConfigError: the data have no such split.
    """
    if is_text(ctx_data):
        role = _roles(recipe).get(split)
        if role is None or role not in ctx_data:
            check_split("evaluation", "the step reads split", split, recipe, ctx_data)
            raise ConfigError(f"split {split!r} of {recipe.data.dataset!r} was not loaded for the steps")
        return ctx_data[role]
    ds = ctx_data["dataset"]
    if split not in ds.splits:
        check_split("evaluation", "the step reads split", split, recipe, ctx_data)
    x, y = ds.splits[split]
    if len(y) == 0:
        raise DataError(f"split {split!r} of {ds.name!r} is empty")
    return torch.from_numpy(np.asarray(x)).float(), torch.from_numpy(np.asarray(y)).long()
