"""``source``: each client holds whole sources — the plays of a corpus, the hospitals of a registry — never a
share of one: the natural split of data that cannot leave where it was made. Sources are dealt largest first to
the client holding the fewest units so far (balanced sizes); there must be at least as many sources as clients."""

from __future__ import annotations

import numpy as np

from nnforge.config import Config, config_type
from nnforge.errors import DataError
from nnforge.federated.partition import Units, register_partitioner


@config_type("partition.source")
class SourceConfig(Config):
    """No options: the dataset says what a unit's source is (a corpus's documents, a text passage's play)."""


@register_partitioner("source", SourceConfig, "whole sources (plays, documents) per client, sizes balanced")
def source(units: Units, clients: int, rng: np.random.Generator, config: SourceConfig) -> list[np.ndarray]:
    if units.sources is None:
        raise DataError("partition 'source' needs data whose units name their source (a character corpus's "
                        "documents, a text dataset's plays); this one has none: use iid, dirichlet or shards")
    names = sorted(set(units.sources))
    if len(names) < clients:
        raise DataError(f"partition 'source': {len(names)} sources cannot give each of {clients} clients one")
    members: dict[str, list[int]] = {name: [] for name in names}
    for i, s in enumerate(units.sources):
        members[s].append(i)
    names = [names[i] for i in rng.permutation(len(names))]  # equal sizes: a seeded order, not the alphabet
    names.sort(key=lambda s: -len(members[s]))
    parts: list[list[int]] = [[] for _ in range(clients)]
    for name in names:
        smallest = min(range(clients), key=lambda c: len(parts[c]))
        parts[smallest].extend(members[name])
    return [np.asarray(p, dtype=np.int64) for p in parts]
