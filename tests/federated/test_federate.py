"""Federated training on Flower's simulation engine: every registered strategy aggregates real client updates,
a federation learns digits, and clients that fail are named, not swallowed."""

from __future__ import annotations

import copy
import math
import os

import pytest
import torch

from nnforge.data import load
from nnforge.federated import (
    FederatedConfig,
    FederatedError,
    LocalTraining,
    federate_many_,
    strategy_names,
)
from nnforge.models import build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits():
    return load("digits")


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build("digits-cnn")


def test_every_registered_strategy_aggregates_in_one_simulation(digits):
    """One Flower simulation (7 clients) runs two rounds of every registered strategy in turn."""
    local = LocalTraining(epochs=1, batch_size=32, optimizer="sgd", optimizer_options={"lr": 0.05})
    names = strategy_names()
    runs = [(_model(), FederatedConfig(clients=7, rounds=2, strategy=name, local=local,
                                       strategy_options={"fedprox": {"proximal_mu": 0.1}}.get(name, {})))
            for name in names]
    start = {k: v.clone() for k, v in _model().state_dict().items()}
    pythonpath = os.environ.get("PYTHONPATH")
    results = federate_many_(runs, digits)
    assert os.environ.get("PYTHONPATH") == pythonpath  # Flower's Ray backend rewrote it; it is given back
    outcome = {name: (model, result.rounds) for name, (model, _), result in zip(names, runs, results, strict=True)}
    for name, (model, rounds) in outcome.items():
        assert [r.round for r in rounds] == [1, 2] and {r.job for r in rounds} == {names.index(name)}, name
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


@pytest.fixture(scope="module")
def ten_jobs(digits):
    """Ten federations of 5 clients in one engine start (Ray's workers start once), their rounds interleaved: nine
    that learn (SCAFFOLD, poisoning, dropouts, privacy, encryption) and, last, one whose clients all fail.
    Returns ``(results, every round record in the order the callbacks saw them, SCAFFOLD's model and its first
    weights)``."""
    local = {"epochs": 1, "batch_size": 16, "optimizer": "sgd", "optimizer_options": {"lr": 0.1}}
    poison = {"poisoned": [0], "scale": -10.0}
    skewed = {"partition": "dirichlet", "partition_options": {"alpha": 0.5}}
    scaffold_model = _model()
    before = copy.deepcopy(scaffold_model.state_dict())
    seen = []
    runs = [
        (_model(), FederatedConfig(clients=5, rounds=2, local=local, attack=poison)),
        (_model(), FederatedConfig(clients=5, rounds=2, strategy="fedmedian", local=local, attack=poison)),
        (_model(), FederatedConfig(clients=5, rounds=2, local=local, attack={"dropped": [1], "drop_rounds": [2]})),
        (build("digits-cnn", norm="group"),
         FederatedConfig(clients=5, rounds=6, local=local, privacy={"epsilon": 3.8, "noise_multiplier": 1.0})),
        (build("digits-cnn", norm="group"),
         FederatedConfig(clients=5, rounds=2, local=local, privacy={"level": "client", "epsilon": 8.0})),
        (scaffold_model, FederatedConfig(clients=5, rounds=4, strategy="scaffold", local={**local, "optimizer_options": {
            "lr": 0.05}}, **skewed)),
        (_model(), FederatedConfig(clients=5, rounds=2, local=local, secure={"audit_plaintext": True}, **skewed)),
        (_model(), FederatedConfig(clients=5, rounds=2, local=local, **skewed)),
        (_model(), FederatedConfig(clients=5, rounds=2, local=local, secure={"method": "secagg+",
                                                                            "audit_plaintext": True}, **skewed)),
        (torch.nn.Linear(3, 2), FederatedConfig(clients=5, rounds=2, local=local)),  # digits are (1, 8, 8): fails
    ]
    results = federate_many_(runs, digits, callbacks=[seen.append], interleave=True)
    return results, seen, scaffold_model, before


def test_scaffold_poisoning_dropouts_privacy_and_encryption_in_one_simulation(ten_jobs):
    results, seen, scaffold_model, before = ten_jobs
    fedavg, median, dropped, dp_record, dp_client, scaffold, secure, plain, secagg, _ = results
    # interleaved: round 1 of every job before any round 2
    assert [r.round for r in seen[:9]] == [1] * 9 and [r.job for r in seen[:9]] == list(range(9))
    for result in (fedavg, median):  # the poisoned client stands out in every round, whatever the strategy
        for r in result.rounds:
            scores = {c.partition: c.anomaly for c in r.clients}
            assert max(scores, key=lambda k: scores[k]) == 0 and scores[0] > 3, scores
            assert min((c.cosine, c.partition) for c in r.clients)[1] == 0  # it points away from the others
    assert median.final["accuracy"] > fedavg.final["accuracy"]  # the median ignores the x -10 update
    r1, r2 = dropped.rounds
    assert r1.replied == 5 and r2.replied == 4 and [c.error for c in r2.failures] == [
        "client 1 dropped out of round 2 (simulated)"]
    # a budget of 3.8 at noise 1.0 (rate 16/287, 18 steps a round): rounds spend 2.62, 3.15, 3.58; the fourth
    # would reach 3.95, so the run stops after three and says so
    eps = [r.privacy["epsilon"] for r in dp_record.rounds]
    assert len(eps) == 3 and eps == sorted(eps) and 3.5 < eps[-1] <= 3.8
    assert dp_record.stopped and f"round {len(eps) + 1} would spend epsilon" in dp_record.stopped
    assert dp_record.privacy["level"] == "record" and dp_record.privacy["delta"] == 1e-5
    # client level: calibrated so that the 2 rounds spend the budget (Opacus's search stops just under it)
    assert dp_client.privacy["level"] == "client" and 7.5 < dp_client.privacy["epsilon"] <= 8.0
    assert len(dp_client.rounds) == 2 and math.isfinite(dp_client.final["loss"])
    # SCAFFOLD on label-skewed clients learns, and every round reports each client
    assert [r.round for r in scaffold.rounds] == [1, 2, 3, 4] and scaffold.final == scaffold.rounds[-1].evaluation
    assert sum(p["examples"] for p in scaffold.partition) == 1437
    assert scaffold.final["accuracy"] > 0.6 and scaffold.rounds[-1].evaluation["loss"] < scaffold.rounds[0].evaluation["loss"]
    assert any(not torch.equal(before[k], v) for k, v in scaffold_model.state_dict().items())  # trained in place
    assert sorted(c.partition for c in scaffold.rounds[-1].clients) == [0, 1, 2, 3, 4]
    assert all(c.loss is not None and math.isfinite(c.loss) for c in scaffold.rounds[-1].clients)
    # secure aggregation: the decrypted sum is the plaintext one up to the quantization, and it tracks FedAvg
    assert all(r.secure and r.secure["max_abs_diff"] < 1e-3 and r.secure["summed"] == 5 for r in secure.rounds)
    # (two rounds at lr 0.1 amplify differences of 1e-4 into a few points either way; 30 rounds: the benchmark)
    assert abs(secure.final["accuracy"] - plain.final["accuracy"]) < 0.1
    assert 2 < secure.rounds[-1].bytes_up / plain.rounds[-1].bytes_up < 8  # two 13-bit values a slot: about 4x
    # Flower's SecAgg+: the unmasked average is the plain one up to its 2^22-level quantization (16 / 2^22 = 4e-6
    # a level, weights summed); four exchanges a round, each counted
    assert all(r.secure["method"] == "secagg+" and r.secure["max_abs_diff"] < 1e-4 and r.replied == 5
               for r in secagg.rounds)
    assert abs(secagg.final["accuracy"] - plain.final["accuracy"]) < 0.1
    assert 1 < secagg.rounds[-1].bytes_down / plain.rounds[-1].bytes_down < 2


def test_a_job_whose_clients_all_fail_names_their_error_and_the_others_go_on(ten_jobs):
    results, seen, _, _ = ten_jobs
    *others, failed = results
    assert failed.failed and failed.stopped == failed.failed and not failed.rounds
    assert "round 1: 0 of 5 sampled clients replied" in failed.failed and "shapes cannot be multiplied" in failed.failed
    assert not any(r.job == 9 for r in seen)  # no round of it was reported
    # the jobs interleaved with it went on: every round of every other job ran (the DP one stops itself at 3)
    assert [len(r.rounds) for r in others] == [2, 2, 2, 3, 2, 4, 2, 2, 2]
    assert all(r.failed is None for r in others) and others[7].final["accuracy"] > 0.1


def test_federate_raises_what_its_one_job_failed_with(digits, monkeypatch):
    from nnforge.federated import _run

    def one_failed(runs, data, **kw):
        return [_run.FederatedResult(config={}, rounds=[], partition=[], engine="simulation", seconds=0.0,
                                     stopped="round 3: 0 of 3 replied", failed="round 3: 0 of 3 replied")]

    monkeypatch.setattr(_run, "federate_many_", one_failed)
    with pytest.raises(FederatedError, match="round 3: 0 of 3 replied"):
        _run.federate_(_model(), digits, FederatedConfig(clients=3, rounds=3))
