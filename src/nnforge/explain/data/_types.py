"""What data attribution takes and gives: examples, model checkpoints, influence scores."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nnforge.errors import DataError, IntegrityError

__all__ = ["Examples", "as_examples", "Checkpoint", "checkpoints_from_run", "InfluenceScores", "InfluentialExamples"]

log = logging.getLogger(__name__)


# --- examples ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Examples:
    """``inputs`` (a tensor (N, ...) or a dict of tensors (N, ...)) with their ``targets`` (N, ...)."""

    inputs: torch.Tensor | Mapping[str, torch.Tensor]
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.targets.shape[0])


def _tensor(value: Any, where: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray | list | tuple):
        try:
            return torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise DataError(f"{where}: cannot make a tensor of it ({exc})") from None
    raise DataError(f"{where} must be a tensor or an array; got {type(value).__name__}")


def as_examples(data: Any, name: str) -> Examples:
    """Check ``data`` = ``(inputs, targets)`` (or :class:`Examples`) and return it as :class:`Examples`.

    Raises:
        DataError: not a pair, no rows, or inputs and targets with different numbers of rows.
    """
    if isinstance(data, Examples):
        data = (data.inputs, data.targets)
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise DataError(f"{name} must be a pair (inputs, targets): inputs a tensor (N, ...) or a dict of tensors "
                        f"(N, ...), targets (N,); got {type(data).__name__}")
    raw_inputs, raw_targets = data
    targets = _tensor(raw_targets, f"{name} targets")
    if isinstance(raw_inputs, Mapping):
        if not raw_inputs:
            raise DataError(f"{name} inputs: the dict of tensors is empty")
        tensors = {str(k): _tensor(v, f"{name} inputs[{k!r}]") for k, v in raw_inputs.items()}
        rows = {k: int(v.shape[0]) if v.dim() else 0 for k, v in tensors.items()}
        inputs: torch.Tensor | dict[str, torch.Tensor] = tensors
    else:
        inputs = _tensor(raw_inputs, f"{name} inputs")
        rows = {"inputs": int(inputs.shape[0]) if inputs.dim() else 0}
    n = int(targets.shape[0]) if targets.dim() else 0
    if n == 0:
        raise DataError(f"{name} is empty: it needs at least one example (targets has no rows)")
    mismatched = {k: r for k, r in rows.items() if r != n}
    if mismatched:
        raise DataError(f"{name}: inputs and targets must have the same number of rows; targets has {n}, "
                        f"{', '.join(f'{k} has {r}' for k, r in mismatched.items())}")
    return Examples(inputs, targets)


# --- checkpoints ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Checkpoint:
    """One set of weights to attribute with, and the learning rate it was trained with (TracIn's η).

    ``path`` None: the weights are ``module``'s own. Otherwise ``module`` is the architecture, and
    :meth:`load` returns a copy of it holding the weights of the training checkpoint at ``path``.
    """

    module: nn.Module
    path: Path | None = None
    learning_rate: float = 1.0
    step: int | None = None

    def load(self) -> nn.Module:
        """The model with this checkpoint's weights (``module`` itself when there is no ``path``)."""
        if self.path is None:
            return self.module
        from nnforge.train import load_checkpoint

        model = copy.deepcopy(self.module)
        load_checkpoint(self.path, model=model, restore_rng=False)
        return model


def _group_lrs(meta: Mapping[str, Any], path: Path) -> list[float]:
    """The learning rate of each optimizer param group stored in a training checkpoint's metadata."""
    groups: Any = meta.get("optimizer", {}).get("param_groups") if isinstance(meta.get("optimizer"), Mapping) else None
    if isinstance(groups, Mapping):  # the checkpoint's JSON form of a list: {"__list__": [...]}
        groups = groups.get("__list__")
    lrs = [g.get("lr") for g in groups if isinstance(g, Mapping)] if isinstance(groups, list) else []
    numbers = [float(lr) for lr in lrs if isinstance(lr, int | float) and not isinstance(lr, bool)]
    if not numbers or len(numbers) != len(lrs):
        raise IntegrityError(f"{path}: the checkpoint does not record its optimizer's learning rate as a number; "
                             "build Checkpoint(model, path, learning_rate=...) yourself")
    return numbers


def checkpoints_from_run(model: nn.Module, where: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]
                         ) -> list[Checkpoint]:
    """The checkpoints :func:`nnforge.train.fit` wrote (``checkpoint_dir``), oldest first, each with its lr.

    Args:
        model: the architecture the run trained (left unchanged; each checkpoint loads into a copy).
        where: the run's checkpoint folder (every ``step-*.safetensors`` in it), or checkpoint files.

    The learning rate of a checkpoint is its optimizer's at the moment it was saved (after the schedule's step:
    the lr of the step that follows), as TracIn weighs checkpoints. With several param groups of different
    lrs, the first group's is used (and logged); give :class:`Checkpoint` your own ``learning_rate`` otherwise.

    Raises:
        IntegrityError: no checkpoint found, or a file is not a training checkpoint that fits ``model``.
    """
    from nnforge.train import load_checkpoint

    if isinstance(where, str | os.PathLike):
        folder = Path(where)
        if not folder.is_dir():
            raise IntegrityError(f"{folder}: not a folder of training checkpoints (fit's checkpoint_dir)")
        paths = sorted(folder.glob("step-*.safetensors"), key=lambda p: (len(p.stem), p.stem))
        if not paths:
            raise IntegrityError(f"{folder}: no training checkpoints (step-*.safetensors); train with "
                                 "TrainConfig(checkpoint_every=..., checkpoint_dir=..., keep_checkpoints=...)")
    else:
        paths = [Path(p) for p in where]
        if not paths:
            raise IntegrityError("no checkpoint files given")
    scratch = copy.deepcopy(model)
    out = []
    for path in paths:
        meta = load_checkpoint(path, model=scratch, restore_rng=False)
        lrs = _group_lrs(meta, path)
        if len(set(lrs)) > 1:
            log.info("%s: param groups train with lrs %s; TracIn weighs the checkpoint with the first", path, lrs)
        step = meta.get("step")
        out.append(Checkpoint(model, path, lrs[0], int(step) if isinstance(step, int) else None))
    return sorted(out, key=lambda c: -1 if c.step is None else c.step)


# --- scores -----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class InfluentialExamples:
    """The training examples that most helped and most harmed one query, as ``(train index, score)`` pairs.

    ``helpful`` is ordered from the highest score down, ``harmful`` from the lowest (most negative) up.
    """

    query: int
    helpful: tuple[tuple[int, float], ...]
    harmful: tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class InfluenceScores:
    """Influence of every training example on every query: ``scores`` (Q, N).

    A positive score means training on the example helped the query (raised its target's margin for TRAK,
    lowered its loss for TracIn); negative, it harmed it. Scores of different methods are on different scales:
    compare rankings, not values.
    """

    scores: torch.Tensor
    method: str
    config: Any  # the DataAttributionConfig used

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.scores.shape[0]), int(self.scores.shape[1])

    def top(self, query: int, k: int = 5) -> InfluentialExamples:
        """The ``k`` most helpful and ``k`` most harmful training examples of query ``query``.

        Raises:
            DataError: ``query`` is not a row of the scores, or ``k`` < 1.
        """
        q, n = self.shape
        if isinstance(query, bool) or not isinstance(query, int) or not -q <= query < q:
            raise DataError(f"query must be an index in [0, {q}) (there are {q} queries); got {query!r}")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise DataError(f"k must be an integer >= 1; got {k!r}")
        row = self.scores[query]
        k = min(k, n)
        hi, lo = torch.topk(row, k), torch.topk(row, k, largest=False)
        return InfluentialExamples(
            query % q,
            tuple((int(i), float(s)) for i, s in zip(hi.indices, hi.values, strict=True)),
            tuple((int(i), float(s)) for i, s in zip(lo.indices, lo.values, strict=True)))
