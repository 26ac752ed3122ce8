"""SCAFFOLD's server side as a Flower strategy (imported only when a federation uses it: it imports Flower)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from nnforge.federated._flower import require
from nnforge.federated.strategies.scaffold import CONTROL_KEY, DELTA_KEY

_strategy = require("flwr.serverapp.strategy")
_app = require("flwr.app")


class Scaffold(_strategy.FedAvg):  # type: ignore[misc,name-defined]
    """FedAvg plus the server's control variate (see :mod:`nnforge.federated.strategies.scaffold`)."""

    def __init__(self, *, server_lr: float = 1.0, **common: Any) -> None:
        super().__init__(**common)
        self.server_lr = server_lr
        self.control: dict[str, torch.Tensor] = {}  # empty until the first round's replies: zeros
        self.total_clients = 1  # N, the nodes connected when a round is configured
        self._current: dict[str, torch.Tensor] | None = None

    def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Iterable[Any]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.total_clients = max(1, len(list(grid.get_node_ids())))
        self._current = arrays.to_torch_state_dict() if self.server_lr != 1.0 else None
        record = _app.ArrayRecord({k: v.clone() for k, v in self.control.items()})
        for message in messages:  # they share one content; setting it once per message is harmless
            message.content[CONTROL_KEY] = record
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> tuple[Any, Any]:
        replies = list(replies)
        deltas = []
        for reply in replies:
            if not reply.has_error() and DELTA_KEY in reply.content:
                deltas.append(reply.content[DELTA_KEY].to_torch_state_dict())
                del reply.content[DELTA_KEY]  # FedAvg's checks want exactly one array record per reply
        current = self._current
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is not None and self.server_lr != 1.0 and current is not None:
            mean = arrays.to_torch_state_dict()
            arrays = _app.ArrayRecord({k: current[k] + self.server_lr * (mean[k] - current[k])
                                       if torch.is_floating_point(mean[k]) else mean[k] for k in mean})
        if deltas:
            share = len(deltas) / self.total_clients
            for name in deltas[0]:
                mean_dc = torch.stack([d[name] for d in deltas]).mean(0)
                self.control[name] = self.control.get(name, torch.zeros_like(mean_dc)) + share * mean_dc
        return arrays, metrics
