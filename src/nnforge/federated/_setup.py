"""Before and around a federated job: the checks that can run before it starts, the clients' job (data, local
training, DP mechanisms, simulated attacks), the key holder of encrypted aggregation, and Flower's simulation
engine (every client on this machine, Ray actors, as many at once as ``client_cpus`` allows)."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from typing import Any

import numpy as np
from torch import nn

from nnforge.federated._client import ClientJob, make_client_app, resolve_share
from nnforge.federated._config import FederatedConfig
from nnforge.federated._data import client_data, data_kind, units_of
from nnforge.federated._flower import require
from nnforge.federated._records import sampled_per_round
from nnforge.federated.partition import partition_indices
from nnforge.federated.privacy import Mechanism, client_mechanism, record_mechanisms
from nnforge.federated.secure import KeyHolder

__all__ = ["simulate", "check_federation"]


def simulate(server_main: Callable[[Any], None], jobs: list[ClientJob], clients: int, client_cpus: float = 1.0) -> None:
    """Flower's simulation engine: ``server_main(grid)`` in an in-process ServerApp thread, ``clients`` virtual
    SuperNodes running ``job``'s ClientApp on Ray actors (as many at once as CPUs allow ``client_cpus`` each)."""
    serverapp = require("flwr.serverapp")
    simulation = require("flwr.simulation")
    server_app = serverapp.ServerApp()

    @server_app.main()  # type: ignore[misc]
    def main(grid: Any, context: Any) -> None:
        server_main(grid)

    cpus = os.cpu_count() or 1
    backend = {"client_resources": {"num_cpus": min(client_cpus, cpus), "num_gpus": 0.0},
               "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False, "log_to_driver": False,
                             "logging_level": "error", "configure_logging": True}}
    saved = os.environ.get("PYTHONPATH")  # Flower's Ray backend rewrites it for its workers; give it back after
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # run_simulation's deprecation notice (see docs/federated.md)
            simulation.run_simulation(server_app=server_app, client_app=make_client_app(jobs), num_supernodes=clients,
                                      backend_config=backend)
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def check_federation(data: Any, config: FederatedConfig, model: nn.Module | None = None) -> list[np.ndarray]:
    """Everything about ``data``, ``config`` (and ``model``) that can be checked before a federation starts: the
    data's kind, ``local.steps`` for a corpus, a partition that can be made (returned: each client's unit
    indices), a model DP-SGD can train, Flower (and Opacus for privacy)."""
    from nnforge.errors import ConfigError

    if config.privacy is not None and config.privacy.level == "record":
        if data_kind(data) != "arrays":
            raise ConfigError("privacy at record level (DP-SGD) is built for array datasets, whose rows are the "
                              "records; use level: client for a corpus")
        norms = [n for n, m in (model.named_modules() if model is not None else [])
                 if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        if norms:
            raise ConfigError(f"privacy at record level needs per-sample gradients, and BatchNorm mixes the samples "
                              f"of a batch ({', '.join(norms[:3])}): use a model without it (digits-cnn: norm: group)")
        require("opacus")

    if data_kind(data) == "corpus" and config.local.steps is None:
        raise ConfigError("federated training on a character corpus needs local.steps (optimizer steps per client "
                          "per round), e.g. local: {steps: 20}")
    units = units_of(data)
    parts = partition_indices(units.labels, config.clients, config.partition, seed=config.seed,
                              sources=units.sources, **config.partition_options)
    require("flwr.simulation" if config.deployment is None else "flwr.serverapp")
    if config.secure is not None:
        require("tenseal")
    return parts


def _prepare(model: nn.Module, data: Any, config: FederatedConfig) -> tuple[ClientJob, list[Mechanism],
                                                                          list[dict[str, Any]]]:
    """The clients' job (their data, local training, DP mechanisms, simulated attack), the DP mechanisms the
    server accounts, and the partition's summary."""
    parts = check_federation(data, config, model)
    units = units_of(data)
    per_client = [client_data(data, p) for p in parts]
    block = int(getattr(getattr(model, "config", None), "block_size", 64) or 64)
    mechanisms: list[Mechanism] = []
    job = ClientJob(template=copy.deepcopy(model).cpu(), data=per_client, local=config.local, seed=config.seed,
                    block_size=block, attack=config.attack, share=resolve_share(model, config.share))
    if config.privacy is not None and config.privacy.level == "record":
        mechanisms = record_mechanisms(config.privacy, [d.examples for d in per_client], config.local.batch_size,
                                       config.local.epochs if config.local.steps is None else None,
                                       config.local.steps, config.rounds)
        job.dp, job.dp_max_grad_norm = mechanisms, config.privacy.max_grad_norm
    elif config.privacy is not None:
        mechanisms = [client_mechanism(config.privacy, sampled_per_round(config), config.clients, config.rounds)]
    partition = [{"client": i, "units": int(len(p)), "examples": d.examples,
                  "labels": np.bincount(units.labels[p], minlength=int(units.labels.max()) + 1).tolist()}
                 for i, (p, d) in enumerate(zip(parts, per_client, strict=True))]
    return job, mechanisms, partition


def _key_holder(job: ClientJob, config: FederatedConfig) -> KeyHolder | None:
    """Secure aggregation: the key holder's context; the clients get only its public part."""
    if config.secure is None:
        return None
    if config.secure.method == "secagg+":  # masks, no keys: the clients only need to know the audit flag
        job.he, job.he_clients = config.secure, config.clients
        return None
    holder = KeyHolder(config.secure)
    job.he, job.he_public, job.he_clients = config.secure, holder.public_context, config.clients
    return holder
