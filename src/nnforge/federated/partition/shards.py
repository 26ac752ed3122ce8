"""``shards``: pathological label skew after McMahan et al. (2017), "Communication-Efficient Learning of Deep
Networks from Decentralized Data": units sorted by label, cut into ``clients × shards_per_client`` shards, each
client dealt ``shards_per_client`` of them at random (with 2, most clients see two classes)."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from nnforge.config import Config, config_type
from nnforge.errors import DataError
from nnforge.federated.partition import Units, register_partitioner


@config_type("partition.shards")
class ShardsConfig(Config):
    """Options of the label-shard split."""

    shards_per_client: int = Field(2, ge=1)


@register_partitioner("shards", ShardsConfig, "sorted by label, cut into shards, a few shards per client")
def shards(units: Units, clients: int, rng: np.random.Generator, config: ShardsConfig) -> list[np.ndarray]:
    n_shards = clients * config.shards_per_client
    if n_shards > len(units):
        raise DataError(f"shards: {n_shards} shards ({clients} clients x {config.shards_per_client}) from only "
                        f"{len(units)} units")
    order = rng.permutation(len(units))  # ties in the label broken at random, then a stable sort by label
    order = order[np.argsort(units.labels[order], kind="stable")]
    pieces = np.array_split(order, n_shards)
    dealt = rng.permutation(n_shards).reshape(clients, config.shards_per_client)
    return [np.concatenate([pieces[s] for s in row]) for row in dealt]
