"""Federated training on Flower's simulation engine: every registered strategy aggregates real client updates,
a federation learns digits, and clients that fail are named, not swallowed."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

from nnforge.data import load
from nnforge.federated import FederatedConfig, FederatedError, LocalTraining, federate_, strategy_names
from nnforge.models import build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build("digits-cnn")


def test_every_registered_strategy_aggregates_in_one_simulation(digits):
    """One Flower simulation (7 clients); the server runs two rounds of every registered strategy in turn."""
    from nnforge.federated._client import ClientJob
    from nnforge.federated._data import client_data, units_of
    from nnforge.federated._run import _Loop, simulate
    from nnforge.federated.partition import partition_indices

    local = LocalTraining(epochs=1, batch_size=32, optimizer="sgd", optimizer_options={"lr": 0.05})
    parts = partition_indices(units_of(digits).labels, 7, "iid", seed=0)
    job = ClientJob(template=_model(), data=[client_data(digits, p) for p in parts], local=local)
    start = {k: v.clone() for k, v in _model().state_dict().items()}
    outcome: dict[str, tuple[torch.nn.Module, list]] = {}

    def server(grid):
        for name in strategy_names():
            options = {"scaffold": {}, "fedprox": {"proximal_mu": 0.1}}.get(name, {})
            config = FederatedConfig(clients=7, rounds=2, strategy=name, strategy_options=options, local=local)
            model = _model()
            loop = _Loop(config, model, digits, [], 64)
            loop.run(grid)
            outcome[name] = (model, loop.rounds)

    pythonpath = os.environ.get("PYTHONPATH")
    simulate(server, job, clients=7)
    assert os.environ.get("PYTHONPATH") == pythonpath  # Flower's Ray backend rewrote it; it is given back
    assert set(outcome) == set(strategy_names())
    for name, (model, rounds) in outcome.items():
        assert [r.round for r in rounds] == [1, 2], name
        assert all(r.sampled == 7 and r.replied == 7 and not r.failures for r in rounds), name
        assert all(r.bytes_down > 7 * 100_000 and r.bytes_up > 7 * 100_000 for r in rounds), name  # 7 x 156 kB
        ev = rounds[-1].evaluation
        assert ev is not None and math.isfinite(ev["loss"]) and 0 <= ev["accuracy"] <= 1, name
        after = model.state_dict()
        assert all(torch.isfinite(v.float()).all() for v in after.values()), name
        assert any(not torch.equal(after[k], start[k]) for k in start), f"{name} left the model unchanged"
    # SCAFFOLD's server sends its control variate from round 2 on: more bytes down than FedAvg
    assert outcome["scaffold"][1][1].bytes_down > 1.9 * outcome["fedavg"][1][1].bytes_down
    # plain averaging learns in 2 rounds of 1 epoch; the server optimizers (FedAvgM, FedAdam, ...) stay finite: their
    # BatchNorm statistics are the clients' average, not a momentum step (which made a running variance negative)
    assert outcome["fedavg"][1][-1].evaluation["accuracy"] > 0.3  # chance: 0.1


def test_a_federation_whose_clients_all_fail_names_their_error(digits):
    model = torch.nn.Linear(3, 2)  # digits are (1, 8, 8): every client's forward fails
    config = FederatedConfig(clients=3, rounds=2, local={"epochs": 1})
    with pytest.raises(FederatedError, match=r"round 1: 0 of 3 sampled clients replied .*shapes cannot be multiplied"):
        federate_(model, digits, config)


def test_scaffold_learns_label_skewed_digits_and_reports_each_round(digits):
    model = _model()
    before = copy.deepcopy(model.state_dict())
    seen = []
    config = FederatedConfig(clients=5, rounds=4, strategy="scaffold", partition="dirichlet",
                             partition_options={"alpha": 0.5}, local={"epochs": 1, "batch_size": 16})
    result = federate_(model, digits, config, callbacks=[seen.append])
    assert [r.round for r in seen] == [1, 2, 3, 4] and result.rounds == seen
    assert sum(p["examples"] for p in result.partition) == 1437
    assert all(r.replied == 5 for r in seen) and result.final == seen[-1].evaluation
    assert result.final["accuracy"] > 0.6
    assert seen[-1].evaluation["loss"] < seen[0].evaluation["loss"]
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())  # trained in place
    losses = [c.loss for c in seen[-1].clients]
    assert all(x is not None and math.isfinite(x) for x in losses)
    assert sorted(c.partition for c in seen[-1].clients) == [0, 1, 2, 3, 4]
