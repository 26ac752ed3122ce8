"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated Learning"), which
Flower's core lacks (only its baselines have it): control variates correct each client's drift toward its own
data. The server keeps ``c``, each client its ``c_i`` (in its Flower node state, so it survives rounds); every
local SGD step uses ``g - c_i + c``, and after ``K`` steps of learning rate ``η`` the client's new variate is
``c_i+ = c_i - c + (x - y) / (K η)`` (the paper's option II). The server averages the models (a global step size
``server_lr`` times the mean update) and moves ``c`` by ``|S|/N`` times the mean ``c_i+ - c_i``.

The correction assumes plain SGD steps: a federation using ``scaffold`` must train its clients with the ``sgd``
optimizer without momentum (checked when the configuration is made).
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from nnforge.config import Config, config_type
from nnforge.federated.strategies import register_strategy

CONTROL_KEY = "scaffold-c"
"""The message record carrying the server's control variate ``c`` to the clients."""
DELTA_KEY = "scaffold-dc"
"""The reply record carrying a client's ``c_i+ - c_i``."""
STATE_KEY = "scaffold-ci"
"""The client's own ``c_i``, kept in its Flower node state between rounds."""


@config_type("strategy.scaffold")
class ScaffoldConfig(Config):
    server_lr: float = Field(1.0, gt=0, description="global step size on the mean model update (the paper's eta_g)")


@register_strategy("scaffold", ScaffoldConfig, "FedAvg with control variates that correct client drift",
                   client="scaffold", source="nnforge")
def build_scaffold(config: ScaffoldConfig, common: dict[str, Any]) -> Any:
    from nnforge.federated.strategies._scaffold_server import Scaffold

    return Scaffold(server_lr=config.server_lr, **common)
