"""The batch contract of :func:`~nnforge.train.fit`, and a shuffling tensor loader that resumes exactly.

Training data is either

- a **batch function** ``batch_fn(index) -> batch``, called with the micro-batch index
  ``step * grad_accum + k`` (0, 1, 2, … over the whole run). Good for language models (nanoGPT's
  ``get_batch``). The loop calls it with the global CPU RNGs (torch, numpy, Python ``random``) seeded from
  ``(seed, index)`` and puts their states back afterwards (:func:`batch_rng`): a function drawing from
  them gives the same batch on every rank under DDP, the same batch after a resume, and leaves the
  per-rank streams that dropout draws from alone; or
- an **iterable** of batches (a ``DataLoader``, :class:`TensorBatches`, a list), iterated again at each
  epoch. When it has ``set_epoch(epoch)`` (like :class:`TensorBatches` or a ``DistributedSampler``-backed
  loader) the loop calls it before each epoch, which makes the order reproducible and resume exact; on
  resume the loop skips the micro-batches already seen in the current epoch.

A batch is a tensor, or a tuple/list/dict of tensors (and other values, passed through). The default loss
reads ``(inputs, targets)``. Under DDP every rank builds the same **global** batch and keeps its slice:
rows ``[rank * B/W, (rank+1) * B/W)`` of every tensor, so the global batch size must divide by the world size.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from nnforge.errors import DataError

__all__ = ["TensorBatches", "BatchStream", "batch_rng", "to_device", "shard_batch", "batch_rows"]

TRAIN, EVAL = 0, 1  # salts of batch_rng: training and evaluation batch i draw different numbers


@contextmanager
def batch_rng(seed: int, index: int, salt: int = TRAIN) -> Iterator[None]:
    """Run the block with torch's CPU generator, numpy's and Python's global RNGs seeded from
    ``(seed, index, salt)``, and restore their previous states afterwards (also on error)."""
    derived = ((seed * 1_000_003 + index) * 2 + salt) % 2**63
    np_state, py_state = np.random.get_state(), random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(derived)
        np.random.seed(derived % 2**32)
        random.seed(derived)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class TensorBatches:
    """Mini-batches of rows of equal-length tensors, reshuffled each epoch from ``seed + epoch``.

    Args:
        tensors: tensors with the same first dimension (e.g. ``x`` and ``y``).
        batch_size: rows per batch (the global batch under DDP).
        shuffle: reshuffle every epoch (deterministically).
        drop_last: drop a last, smaller batch.
        seed: base of the per-epoch shuffling seed.
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, shuffle: bool = True,
                 drop_last: bool = False, seed: int = 0) -> None:
        if not tensors or any(t.shape[0] != tensors[0].shape[0] for t in tensors):
            raise DataError("TensorBatches needs one or more tensors with the same number of rows")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1; got {batch_size}")
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle
        self.drop_last, self.seed, self.epoch = drop_last, seed, 0

    def set_epoch(self, epoch: int) -> None:
        """Select the order of epoch ``epoch`` (called by the loop before each epoch)."""
        self.epoch = epoch

    def __len__(self) -> int:
        n = self.tensors[0].shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        n = self.tensors[0].shape[0]
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        else:
            order = torch.arange(n)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            yield tuple(t[idx] for t in self.tensors)


class BatchStream:
    """Hands the loop its next micro-batch from a batch function or an iterable, tracking epochs.

    Args:
        data: a batch function or an iterable (see the module docstring).
        seed: the run's seed: a batch function runs under :func:`batch_rng` ``(seed, index)``.
        index: micro-batches already consumed in the run (resume).
        epoch, batch_in_epoch: position inside the iterable (resume).
        on_epoch_change: called with ``"end"``/``"start"`` when an iterable wraps around.
    """

    def __init__(self, data: Callable[[int], Any] | Iterable[Any], *, seed: int = 0, index: int = 0, epoch: int = 0,
                 batch_in_epoch: int = 0, on_epoch_change: Callable[[str, int], None] | None = None) -> None:
        self.is_function = callable(data) and not hasattr(data, "__iter__")
        if not self.is_function and not hasattr(data, "__iter__"):
            raise DataError(f"training data must be a batch function or an iterable of batches; got {type(data).__name__}")
        self.data, self.seed, self.index, self.epoch, self.batch_in_epoch = data, seed, index, epoch, batch_in_epoch
        self._on_epoch_change = on_epoch_change or (lambda kind, epoch: None)
        self._iterator: Iterator[Any] | None = None

    def _start_epoch(self, skip: int) -> None:
        if hasattr(self.data, "set_epoch"):
            self.data.set_epoch(self.epoch)
        self._iterator = iter(self.data)  # type: ignore[arg-type]
        for _ in range(skip):
            next(self._iterator)

    def next(self) -> Any:
        """The next micro-batch."""
        if self.is_function:
            with batch_rng(self.seed, self.index):
                batch = self.data(self.index)  # type: ignore[operator]
            self.index += 1
            return batch
        if self._iterator is None:
            self._start_epoch(skip=self.batch_in_epoch)
        try:
            batch = next(self._iterator)  # type: ignore[arg-type]
        except StopIteration:
            if self.batch_in_epoch == 0:
                raise DataError("the training data yielded no batches; check that it is not empty") from None
            self._on_epoch_change("end", self.epoch)
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self._on_epoch_change("start", self.epoch)
            self._start_epoch(skip=0)
            return self.next()
        self.index += 1
        self.batch_in_epoch += 1
        return batch


def _map_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return {k: _map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_map_tensors(v, fn) for v in batch)
    return batch


def to_device(batch: Any, device: torch.device) -> Any:
    """The batch with every tensor moved to ``device``."""
    return _map_tensors(batch, lambda t: t.to(device, non_blocking=True))


def batch_rows(batch: Any) -> int:
    """Rows of the first tensor in the batch (1 when it holds none): the weight of its metrics."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    values = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for v in values:
        if isinstance(v, (torch.Tensor, dict, list, tuple)):
            return batch_rows(v)
    return 1


def shard_batch(batch: Any, rank: int, world_size: int, *, even: bool = True) -> Any:
    """This rank's slice of a global batch: its share of the rows of every tensor.

    With ``even`` (training) the rows must divide by ``world_size``, so that averaging the ranks' gradients
    equals the gradient of the global batch; otherwise (evaluation, where metrics are weighted by rows)
    the first ranks get one row more.
    """
    if world_size == 1:
        return batch

    def take(t: torch.Tensor) -> torch.Tensor:
        rows = t.shape[0] if t.dim() else 0
        if even and rows % world_size:
            raise DataError(f"a global batch of {rows} rows cannot be split evenly across {world_size} ranks; "
                            f"use a batch size divisible by {world_size} (and drop_last=True, so that the last "
                            "batch of an epoch is full too)")
        return torch.tensor_split(t, world_size)[rank]

    return _map_tensors(batch, take)
