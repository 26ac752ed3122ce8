"""Partitioners: every registered one deals each unit to exactly one client, seeded; the non-IID ones skew as
their papers say; impossible splits fail naming why."""

from __future__ import annotations

import numpy as np
import pytest

from nnforge.errors import ConfigError, DataError
from nnforge.federated import PARTITIONERS, partition_indices, partition_names

LABELS = np.repeat(np.arange(10), 40)  # 400 units, 10 classes
SOURCES = [f"play{i % 25}" for i in range(400)]


@pytest.mark.parametrize("method", partition_names())
def test_every_partitioner_deals_each_unit_once_and_is_seeded(method):
    a = partition_indices(LABELS, 8, method, seed=3, sources=SOURCES)
    b = partition_indices(LABELS, 8, method, seed=3, sources=SOURCES)
    assert len(a) == 8 and all(len(p) for p in a)
    assert sorted(np.concatenate(a).tolist()) == list(range(400))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    c = partition_indices(LABELS, 8, method, seed=4, sources=SOURCES)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c, strict=True))  # the seed matters


def _classes_per_client(parts):
    return [len(np.unique(LABELS[p])) for p in parts]


def test_dirichlet_skew_grows_as_alpha_shrinks():
    skewed = partition_indices(LABELS, 10, "dirichlet", alpha=0.1, seed=0)
    near_iid = partition_indices(LABELS, 10, "dirichlet", alpha=100.0, seed=0)
    assert np.mean(_classes_per_client(skewed)) < 6 <= np.mean(_classes_per_client(near_iid))
    assert np.mean(_classes_per_client(near_iid)) == 10


def test_shards_give_each_client_about_two_classes():
    parts = partition_indices(LABELS, 10, "shards", shards_per_client=2, seed=0)
    assert max(_classes_per_client(parts)) <= 4 and np.mean(_classes_per_client(parts)) <= 3
    assert {len(p) for p in parts} == {40}


def test_source_keeps_each_source_whole_and_balances_sizes():
    parts = partition_indices(LABELS, 5, "source", sources=SOURCES, seed=0)
    owner = {}
    for client, p in enumerate(parts):
        for i in p:
            assert owner.setdefault(SOURCES[i], client) == client  # a source never spans two clients
    assert max(len(p) for p in parts) - min(len(p) for p in parts) <= 16  # 25 sources of 16 units over 5


def test_iid_sizes_differ_by_at_most_one():
    sizes = [len(p) for p in partition_indices(LABELS, 7, "iid", seed=1)]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize(("call", "error", "words"), [
    (lambda: partition_indices(LABELS, 4, "dirichlett"), ConfigError, "did you mean"),
    (lambda: partition_indices(LABELS, 4, "dirichlet", alpha=0), ConfigError, "alpha"),
    (lambda: partition_indices(LABELS, 4, "dirichlet", beta=1), ConfigError, "beta"),
    (lambda: partition_indices(LABELS, 4, "source"), DataError, "use iid, dirichlet or shards"),
    (lambda: partition_indices(LABELS, 30, "source", sources=SOURCES), DataError, "25 sources cannot give"),
    (lambda: partition_indices(LABELS[:3], 4, "iid"), DataError, "3 units"),
    (lambda: partition_indices(LABELS, 300, "shards"), DataError, "600 shards"),
    (lambda: partition_indices(LABELS, 0, "iid"), ConfigError, "clients"),
    (lambda: partition_indices(LABELS.astype(float), 4, "iid"), DataError, "ints"),
])
def test_impossible_splits_fail_naming_why(call, error, words):
    with pytest.raises(error, match=words):
        call()


def test_a_registered_partitioner_that_leaves_a_client_empty_is_caught():
    from nnforge.config import Config
    from nnforge.federated import register_partitioner

    class NoOptions(Config):
        pass

    @register_partitioner("test-broken", NoOptions, "gives everything to client 0")
    def broken(units, clients, rng, config):
        return [np.arange(len(units))] + [np.array([], dtype=np.int64)] * (clients - 1)

    try:
        with pytest.raises(DataError, match=r"left client\(s\) \[1, 2\] with no data"):
            partition_indices(LABELS, 3, "test-broken")
    finally:
        PARTITIONERS._entries.pop("test-broken")  # type: ignore[attr-defined]
