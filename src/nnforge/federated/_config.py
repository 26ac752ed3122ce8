"""The configuration of a federated job: how many clients, how the data is split among them, how they train
locally each round and how the server aggregates."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from nnforge.config import Config, config_type
from nnforge.federated.privacy import PrivacyConfig
from nnforge.federated.secure import SecureAggregationConfig

__all__ = ["LocalTraining", "FederatedConfig", "AttackConfig", "DeploymentConfig"]


@config_type("federated.local")
class LocalTraining(Config):
    """What each client does with the global model in one round (nnforge's training loop on its own data)."""

    epochs: float = Field(1.0, gt=0, le=100, description="passes over the client's rows per round (array data)")
    steps: int | None = Field(None, ge=1, le=100_000, description="optimizer steps per round instead of epochs "
                                                                 "(a character corpus needs it)")
    batch_size: int = Field(32, ge=1, le=65_536)
    block_size: int | None = Field(None, ge=2, description="character LM context; default: the model's")
    optimizer: str = "sgd"
    optimizer_options: dict[str, Any] = Field(default_factory=lambda: {"lr": 0.05})
    clip_norm: float | None = Field(None, gt=0, description="max global grad norm per step; None: no clipping")

    @model_validator(mode="after")
    def _known_optimizer(self) -> LocalTraining:
        from nnforge.optim import optimizer_config

        optimizer_config(self.optimizer, **self.optimizer_options)  # names an unknown optimizer or option
        return self

    @property
    def lr(self) -> float:
        from nnforge.optim import optimizer_config

        return float(getattr(optimizer_config(self.optimizer, **self.optimizer_options), "lr", float("nan")))


@config_type("federated.attack")
class AttackConfig(Config):
    """Simulated misbehaving clients, for measuring a strategy's robustness (never set on a real federation):
    ``poisoned`` clients send ``global + scale × (their update)`` (``scale: -10`` flips and amplifies; ``-1``
    only flips the sign); ``dropped`` clients fail in the rounds listed (all rounds when empty) before replying."""

    poisoned: list[int] = Field(default_factory=list, description="partition ids of poisoning clients")
    scale: float = Field(-10.0, description="multiplies a poisoning client's update")
    dropped: list[int] = Field(default_factory=list, description="partition ids of clients that fail mid-round")
    drop_rounds: list[int] = Field(default_factory=list, description="rounds in which they fail (empty: every one)")


@config_type("federated.deployment")
class DeploymentConfig(Config):
    """Where a deployed federation runs: the SuperLink's address and how this side trusts it (see
    :mod:`nnforge.federated.deployment`). TLS is the default: give the CA that signed the SuperLink's
    certificate, or say ``insecure: true`` explicitly (loopback experiments only)."""

    superlink: str = Field(..., pattern=r"^[A-Za-z0-9._\-\[\]:]+:[0-9]{1,5}$",
                           description="the SuperLink's address, host:port (its Control API)")
    root_certificates: str | None = Field(None, description="PEM file of the CA that signed the SuperLink's "
                                                            "certificate")
    insecure: bool = Field(False, description="no TLS (refused unless set: updates would travel in the clear)")
    out_dir: str | None = Field(None, description="folder the ServerApp writes the rounds, result and model to; it "
                                                  "must be readable here (default: a new temporary folder, right "
                                                  "when the SuperLink runs on this machine)")
    timeout_s: float = Field(3600.0, gt=0, description="longest the whole run may take before it is stopped")

    @model_validator(mode="after")
    def _trust(self) -> DeploymentConfig:
        if self.root_certificates is None and not self.insecure:
            raise ValueError("deployment: give root_certificates (the CA that signed the SuperLink's certificate) "
                             "or insecure: true for a plaintext loopback experiment")
        if self.root_certificates is not None and self.insecure:
            raise ValueError("deployment: root_certificates and insecure: true contradict each other")
        return self


@config_type("federated")
class FederatedConfig(Config):
    """A federated job: ``rounds`` rounds over ``clients`` clients, each holding one part of the data.

    ``strategy`` names a registered aggregation strategy (:func:`~nnforge.federated.strategy_names`: Flower's
    ``fedavg``, ``fedprox``, ``fedadam``, ``fedmedian``, ``krum``, … and nnforge's ``scaffold``) with its
    ``strategy_options``; ``partition`` a registered partitioner (``iid``, ``dirichlet``, ``shards``, ``source``)
    with its ``partition_options``.
    """

    clients: int = Field(10, ge=2, le=10_000)
    rounds: int = Field(10, ge=1, le=100_000)
    strategy: str = "fedavg"
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    partition: str = "iid"
    partition_options: dict[str, Any] = Field(default_factory=dict)
    fraction_train: float = Field(1.0, gt=0, le=1, description="share of the clients sampled each round")
    min_clients: int = Field(2, ge=1, description="fewest clients a round needs (and waits for)")
    local: LocalTraining = Field(default_factory=LocalTraining)
    seed: int = Field(0, ge=0, lt=2**31)
    eval_every: int = Field(1, ge=1, description="evaluate the global model on the server every N rounds (and "
                                                  "after the last)")
    eval_batches: int = Field(20, ge=1, description="character LM: validation batches per evaluation")
    client_cpus: float = Field(1.0, gt=0, description="CPUs each simulated client takes (Flower's Ray backend "
                                                      "runs as many clients at once as CPUs allow)")
    round_timeout_s: float = Field(600.0, gt=0, description="longest a round waits for its clients' replies")
    share: Literal["auto", "all", "trainable"] = Field("auto", description="what travels each round: all "
                                                      "(weights and buffers), trainable (the trainable parameters: "
                                                      "LoRA adapters and head on a frozen base), auto (trainable "
                                                      "when some parameters are frozen)")
    attack: AttackConfig | None = Field(None, description="simulated poisoning or failing clients (robustness "
                                                          "measurement only)")
    secure: SecureAggregationConfig | None = Field(None, description="homomorphic-encryption aggregation: the "
                                                                     "server sums encrypted updates (TenSEAL CKKS)")
    privacy: PrivacyConfig | None = Field(None, description="differential privacy: record level (DP-SGD on the "
                                                            "clients, Opacus) or client level (Flower's central DP)")
    deployment: DeploymentConfig | None = Field(None, description="run on a SuperLink and its SuperNodes "
                                                                  "(Flower's deployment engine) instead of "
                                                                  "simulating every client here")

    @model_validator(mode="after")
    def _known_methods(self) -> FederatedConfig:
        from nnforge.federated.partition import check_options
        from nnforge.federated.strategies import STRATEGIES, check_strategy_options

        check_strategy_options(self.strategy, self.strategy_options)
        check_options(self.partition, self.partition_options)
        if self.min_clients > self.clients:
            raise ValueError(f"min_clients {self.min_clients} is more than the {self.clients} clients")
        if STRATEGIES.get(self.strategy).client == "scaffold":
            momentum = self.local.optimizer_options.get("momentum", 0.0)
            if self.local.optimizer != "sgd" or momentum:
                raise ValueError(f"strategy 'scaffold' corrects plain SGD steps: set local.optimizer to 'sgd' "
                                 f"without momentum (got {self.local.optimizer!r}, momentum {momentum})")
        if self.secure is not None:
            if self.secure.method == "secagg+" and self.strategy != "fedavg":
                raise ValueError(f"secure method secagg+ runs Flower's SecAgg+ workflow with FedAvg; strategy "
                                 f"{self.strategy!r} is not available with it")
            if self.secure.method == "secagg+" and self.share == "trainable":
                raise ValueError("secure method secagg+ sends every float tensor of the model; share: trainable "
                                 "is not available with it")
            if self.strategy not in ("fedavg", "fedprox"):
                raise ValueError(f"secure aggregation sums the clients' weighted updates: it is FedAvg's (or "
                                 f"FedProx's) aggregate; strategy {self.strategy!r} needs to see each update")
            if self.privacy is not None and self.privacy.level == "client":
                raise ValueError("client-level DP clips each client's update on the server, which secure "
                                 "aggregation hides from it; use privacy level record with secure aggregation")
        if self.deployment is not None and self.secure is not None:
            raise ValueError("secure aggregation (HE) runs on the simulation engine for now: its key holder is the "
                             "process that starts the job, which a deployed ServerApp is not")
        if self.attack is not None:
            bad = [i for i in (*self.attack.poisoned, *self.attack.dropped) if not 0 <= i < self.clients]
            if bad:
                raise ValueError(f"attack: client {bad[0]} is not one of the {self.clients} clients (0..{self.clients - 1})")
        if self.privacy is not None and self.privacy.level == "record" and self.local.clip_norm is not None:
            raise ValueError("privacy at record level clips each sample's gradient to privacy.max_grad_norm; "
                             "leave local.clip_norm unset")
        return self
