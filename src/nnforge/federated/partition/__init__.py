"""Splitting a dataset among federated clients, seeded: every partitioner registered by name.

A partitioner sees *units* — the rows of an array or text dataset, or the documents of a character corpus — with
their labels (class, or a corpus document's group) and their sources (a text passage's play, a document's name),
and returns, per client, the indices of the units it holds. Every unit goes to exactly one client; a client with
no unit is an error, never an idle node.

>>> import numpy as np
>>> from nnforge.federated import partition_indices
>>> labels = np.repeat(np.arange(4), 25)  # 100 rows, 4 classes
>>> parts = partition_indices(labels, clients=5, method="dirichlet", alpha=0.5, seed=0)
>>> sorted(int(i) for p in parts for i in p) == list(range(100))
True

Adding a partitioner is one new module in this folder::

    @register_partitioner("mine", MineConfig, "what it does")
    def mine(units: Units, clients: int, rng: np.random.Generator, config: MineConfig) -> list[np.ndarray]: ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from nnforge.config import Config, describe_validation_error
from nnforge.errors import ConfigError, DataError
from nnforge.registry import Registry, import_submodules

__all__ = ["PARTITIONERS", "Partitioner", "Units", "register_partitioner", "partition_indices", "partition_names",
           "check_options"]


@dataclass(frozen=True)
class Units:
    """What a partitioner splits: ``labels[i]`` (an int) and ``sources[i]`` (a name, or None) of unit ``i``."""

    labels: np.ndarray
    sources: list[str] | None = None

    def __len__(self) -> int:
        return len(self.labels)


PartitionFn = Callable[[Units, int, np.random.Generator, Any], list[np.ndarray]]


@dataclass(frozen=True)
class Partitioner:
    name: str
    config: type[Config]
    description: str
    fn: PartitionFn


PARTITIONERS: Registry[Partitioner] = Registry("partition method")


def register_partitioner(name: str, config: type[Config], description: str) -> Callable[[PartitionFn], PartitionFn]:
    def decorator(fn: PartitionFn) -> PartitionFn:
        PARTITIONERS.add(name, Partitioner(name, config, description, fn))
        return fn

    return decorator


def partition_names() -> list[str]:
    return PARTITIONERS.names()


def check_options(method: str, options: dict[str, Any], *, where: str = "partition") -> Config:
    """The partitioner's validated config; an unknown method or option is a :class:`ConfigError` naming it."""
    spec = PARTITIONERS.get(method, where=where)
    try:
        return spec.config.model_validate(options)
    except ConfigError:
        raise
    except Exception as exc:  # pydantic's ValidationError (Config's own metaclass converts direct calls only)
        from pydantic import ValidationError

        if isinstance(exc, ValidationError):
            raise ConfigError(f"{where} {method!r}: " + "; ".join(describe_validation_error(exc))) from None
        raise


def partition_indices(labels: Any, clients: int, method: str = "iid", *, seed: int = 0,
                      sources: list[str] | None = None, **options: Any) -> list[np.ndarray]:
    """Split units ``0..len(labels)-1`` among ``clients`` with the registered ``method``, seeded.

    Returns one sorted int64 index array per client; together they hold every unit exactly once.
    """
    if isinstance(clients, bool) or not isinstance(clients, int) or clients < 1:
        raise ConfigError(f"clients must be a whole number >= 1; got {clients!r}")
    config = check_options(method, options)
    y = np.asarray(labels)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"partition: labels must be a 1-D array of ints; got shape {y.shape} of {y.dtype}")
    if sources is not None and len(sources) != len(y):
        raise DataError(f"partition: {len(sources)} sources for {len(y)} units")
    if len(y) < clients:
        raise DataError(f"partition: {len(y)} units cannot give each of {clients} clients one")
    units = Units(y.astype(np.int64), sources)
    parts = PARTITIONERS.get(method, where="partition").fn(units, clients, np.random.default_rng(seed), config)
    out = [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    _check(out, len(y), clients, method)
    return out


def _check(parts: list[np.ndarray], n: int, clients: int, method: str) -> None:
    """A partitioner's result holds every unit once and gives every client something (else a bug, named)."""
    if len(parts) != clients:
        raise DataError(f"partition {method!r} returned {len(parts)} parts for {clients} clients")
    empty = [i for i, p in enumerate(parts) if len(p) == 0]
    if empty:
        raise DataError(f"partition {method!r} left client(s) {empty} with no data; use fewer clients or, for "
                        "dirichlet, a larger alpha")
    seen = np.concatenate(parts)
    if len(seen) != n or len(np.unique(seen)) != n:
        raise DataError(f"partition {method!r} did not assign each of the {n} units exactly once")


import_submodules(__name__, __path__)  # each partitioner module registers itself
