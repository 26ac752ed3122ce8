"""Flower's strategies, wrapped, not re-implemented: each gets a validated options config and a registered name.

| name | Flower class | paper |
| --- | --- | --- |
| ``fedavg`` | ``FedAvg`` | McMahan et al. (2017) |
| ``fedavgm`` | ``FedAvgM`` | Hsu, Qi & Brown (2019) |
| ``fedprox`` | ``FedProx`` (clients add the proximal term) | Li et al. (2020) |
| ``fedadam``, ``fedadagrad``, ``fedyogi`` | ``FedAdam``, ``FedAdagrad``, ``FedYogi`` | Reddi et al. (2021) |
| ``fedmedian`` | ``FedMedian`` (coordinate-wise median) | Yin et al. (2018) |
| ``fedtrimmedavg`` | ``FedTrimmedAvg`` (coordinate-wise trimmed mean) | Yin et al. (2018) |
| ``krum``, ``multikrum`` | ``Krum``, ``MultiKrum`` | Blanchard et al. (2017) |
| ``bulyan`` | ``Bulyan`` | El Mhamdi et al. (2018) |
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nnforge.config import Config, config_type
from nnforge.federated._flower import require
from nnforge.federated.strategies import register_strategy


def _flower(cls: str) -> Any:
    return getattr(require("flwr.serverapp.strategy"), cls)


@config_type("strategy.fedavg")
class FedAvgConfig(Config):
    """No options beyond the federation's own (clients, fraction per round)."""


@config_type("strategy.fedavgm")
class FedAvgMConfig(Config):
    server_learning_rate: float = Field(1.0, gt=0)
    server_momentum: float = Field(0.9, ge=0, lt=1)


@config_type("strategy.fedprox")
class FedProxConfig(Config):
    proximal_mu: float = Field(0.01, ge=0, description="weight of (mu/2)·||w - w_global||² in each client's loss")


@config_type("strategy.fedopt")
class FedOptConfig(Config):
    """Server-side adaptive optimizers (Reddi et al. 2021): ``eta`` is the server's step size, ``tau`` the
    adaptivity (epsilon). ``eta_l`` is unused by nnforge's clients (their own optimizer options set the local lr)."""

    eta: float = Field(0.01, gt=0)
    eta_l: float = Field(0.1, gt=0)
    beta_1: float = Field(0.9, ge=0, lt=1)
    beta_2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)


@config_type("strategy.fedadagrad")
class FedAdagradConfig(Config):
    eta: float = Field(0.1, gt=0)
    eta_l: float = Field(0.1, gt=0)
    tau: float = Field(1e-3, gt=0)


@config_type("strategy.fedmedian")
class FedMedianConfig(Config):
    """No options."""


@config_type("strategy.fedtrimmedavg")
class FedTrimmedAvgConfig(Config):
    beta: float = Field(0.2, ge=0, lt=0.5, description="share cut from each end, per coordinate")


@config_type("strategy.krum")
class KrumConfig(Config):
    num_malicious_nodes: int = Field(1, ge=0)


@config_type("strategy.multikrum")
class MultiKrumConfig(Config):
    num_malicious_nodes: int = Field(1, ge=0)
    num_nodes_to_select: int = Field(5, ge=1)


@config_type("strategy.bulyan")
class BulyanConfig(Config):
    num_malicious_nodes: int = Field(1, ge=0)


@register_strategy("fedavg", FedAvgConfig, "weighted average of the clients' models")
def build_fedavg(config: FedAvgConfig, common: dict[str, Any]) -> Any:
    return _flower("FedAvg")(**common)


@register_strategy("fedavgm", FedAvgMConfig, "FedAvg with server momentum", average_buffers=True)
def build_fedavgm(config: FedAvgMConfig, common: dict[str, Any]) -> Any:
    return _flower("FedAvgM")(**common, **config.model_dump())


@register_strategy("fedprox", FedProxConfig, "FedAvg; clients add a proximal term toward the global model",
                   client="prox")
def build_fedprox(config: FedProxConfig, common: dict[str, Any]) -> Any:
    return _flower("FedProx")(**common, proximal_mu=config.proximal_mu)


@register_strategy("fedadam", FedOptConfig, "server-side Adam on the averaged update", average_buffers=True)
def build_fedadam(config: FedOptConfig, common: dict[str, Any]) -> Any:
    return _flower("FedAdam")(**common, **config.model_dump())


@register_strategy("fedyogi", FedOptConfig, "server-side Yogi on the averaged update", average_buffers=True)
def build_fedyogi(config: FedOptConfig, common: dict[str, Any]) -> Any:
    return _flower("FedYogi")(**common, **config.model_dump())


@register_strategy("fedadagrad", FedAdagradConfig, "server-side Adagrad on the averaged update", average_buffers=True)
def build_fedadagrad(config: FedAdagradConfig, common: dict[str, Any]) -> Any:
    return _flower("FedAdagrad")(**common, **config.model_dump())


@register_strategy("fedmedian", FedMedianConfig, "coordinate-wise median of the clients' models", robust=True)
def build_fedmedian(config: FedMedianConfig, common: dict[str, Any]) -> Any:
    return _flower("FedMedian")(**common)


@register_strategy("fedtrimmedavg", FedTrimmedAvgConfig, "coordinate-wise trimmed mean", robust=True)
def build_fedtrimmedavg(config: FedTrimmedAvgConfig, common: dict[str, Any]) -> Any:
    return _flower("FedTrimmedAvg")(**common, beta=config.beta)


@register_strategy("krum", KrumConfig, "the one model closest to its neighbours", robust=True)
def build_krum(config: KrumConfig, common: dict[str, Any]) -> Any:
    return _flower("Krum")(**common, num_malicious_nodes=config.num_malicious_nodes)


@register_strategy("multikrum", MultiKrumConfig, "average of the models Krum ranks best", robust=True)
def build_multikrum(config: MultiKrumConfig, common: dict[str, Any]) -> Any:
    return _flower("MultiKrum")(**common, **config.model_dump())


@register_strategy("bulyan", BulyanConfig, "Krum selection, then a trimmed mean of the selected", robust=True)
def build_bulyan(config: BulyanConfig, common: dict[str, Any]) -> Any:
    return _flower("Bulyan")(**common, num_malicious_nodes=config.num_malicious_nodes)
