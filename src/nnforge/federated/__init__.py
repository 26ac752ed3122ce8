"""Federated learning on Flower: any nnforge model trained by clients that keep their data, with Flower's
strategies (and SCAFFOLD, which Flower's core lacks), seeded non-IID partitions and every round reported.

>>> from nnforge.federated import FederatedConfig, strategy_names, partition_names
>>> {"fedavg", "fedprox", "fedadam", "scaffold", "krum"} <= set(strategy_names())
True
>>> partition_names()
['dirichlet', 'iid', 'shards', 'source']
>>> FederatedConfig(clients=10, rounds=30, strategy="scaffold", partition="dirichlet",
...                 partition_options={"alpha": 0.5}).local.optimizer
'sgd'

``federate_(model, data, config)`` trains ``model`` in place (Flower's simulation engine on this machine, or its
deployment engine when ``config.deployment`` names a SuperLink: :mod:`nnforge.federated.deployment`) and returns a
:class:`FederatedResult`; see ``docs/federated.md``. Importing this package does not import Flower.
"""

from __future__ import annotations

from nnforge.federated._config import AttackConfig, DeploymentConfig, FederatedConfig, LocalTraining
from nnforge.federated._run import (
    ClientRound,
    FederatedError,
    FederatedResult,
    RoundRecord,
    check_federation,
    evaluate_global,
    federate_,
    federate_many_,
)
from nnforge.federated.partition import PARTITIONERS, partition_indices, partition_names, register_partitioner
from nnforge.federated.privacy import PrivacyConfig
from nnforge.federated.strategies import STRATEGIES, register_strategy, strategy_names

__all__ = ["FederatedConfig", "DeploymentConfig", "LocalTraining", "AttackConfig", "PrivacyConfig", "federate_", "federate_many_",
           "FederatedResult", "RoundRecord", "ClientRound", "FederatedError", "evaluate_global", "check_federation",
           "PARTITIONERS", "partition_indices", "partition_names", "register_partitioner", "STRATEGIES",
           "register_strategy", "strategy_names"]
