"""``dirichlet``: label skew after Hsu, Qi & Brown (2019), "Measuring the Effects of Non-Identical Data
Distribution for Federated Visual Classification": each class's units are dealt to the clients in proportions
drawn from Dir(α); small α gives each client few classes, large α approaches IID.

Draws are repeated (from the same seeded generator) until every client holds at least ``min_size`` units, as in
the common reference implementations; after ``max_tries`` draws it fails naming α and the clients.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from nnforge.config import Config, config_type
from nnforge.errors import DataError
from nnforge.federated.partition import Units, register_partitioner


@config_type("partition.dirichlet")
class DirichletConfig(Config):
    """Options of the Dirichlet label split."""

    alpha: float = Field(0.5, gt=0, description="concentration: small is skewed, large is near IID")
    min_size: int = Field(2, ge=1, description="fewest units a client may hold (redraw until it does)")
    max_tries: int = Field(1000, ge=1)


@register_partitioner("dirichlet", DirichletConfig, "label skew: each class dealt in Dir(alpha) proportions")
def dirichlet(units: Units, clients: int, rng: np.random.Generator, config: DirichletConfig) -> list[np.ndarray]:
    labels = units.labels
    classes = np.unique(labels)
    if config.min_size * clients > len(labels):
        raise DataError(f"dirichlet: {clients} clients x min_size {config.min_size} is more than the "
                        f"{len(labels)} units")
    for _ in range(config.max_tries):
        parts: list[list[int]] = [[] for _ in range(clients)]
        for c in classes:
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet(np.full(clients, config.alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for client, chunk in enumerate(np.split(idx, cuts)):
                parts[client].extend(chunk.tolist())
        if min(len(p) for p in parts) >= config.min_size:
            return [np.asarray(p, dtype=np.int64) for p in parts]
    raise DataError(f"dirichlet: no draw in {config.max_tries} gave each of {clients} clients {config.min_size} "
                    f"units at alpha {config.alpha}; raise alpha, lower min_size or use fewer clients")
