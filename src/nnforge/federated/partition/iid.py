"""``iid``: a seeded shuffle cut into near-equal parts (the reference every non-IID split is compared with)."""

from __future__ import annotations

import numpy as np

from nnforge.config import Config, config_type
from nnforge.federated.partition import Units, register_partitioner


@config_type("partition.iid")
class IIDConfig(Config):
    """No options."""


@register_partitioner("iid", IIDConfig, "shuffled, cut into near-equal parts")
def iid(units: Units, clients: int, rng: np.random.Generator, config: IIDConfig) -> list[np.ndarray]:
    return list(np.array_split(rng.permutation(len(units)), clients))
