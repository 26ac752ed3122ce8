"""Benchmark: federated learning of the digits CNN on Flower — strategies against central training, differential
privacy, and a poisoned client against robust aggregation.

    python benchmarks/federated/digits.py            # full: 2 seeds x 19 federated runs of 30 rounds (~65 min on 2 cores)
    python benchmarks/federated/digits.py --quick    # one seed, 5 rounds
    python benchmarks/federated/digits.py --smoke    # 4 clients, 1 round, a few runs; writes nothing

Setup (the issue's): scikit-learn's digits, the 1,437 training rows dealt to 10 clients by a Dirichlet(0.5) label
split (seeded), 30 rounds, one local epoch of SGD (lr 0.05, batch 16) per round, every client every round; the
global model evaluated on the 360 held-out rows after the last round. Central training: the same model, optimizer
and batch size on all 1,437 rows for 30 epochs (the same number of passes over the data).

- **Strategies**: FedAvg, FedProx (mu 0.01), FedAdam (server lr 0.01) and SCAFFOLD on the ``digits-cnn``
  (BatchNorm).
- **Differential privacy** (record level, DP-SGD through Opacus on every client, delta 1e-5, per-sample clip 1.0,
  Poisson sampling at 32/n_k, noise calibrated per client so the 30 rounds spend exactly epsilon; Opacus's RDP
  accountant composed over the rounds): epsilon 1, 3, 8 on FedAvg. Local training for DP is SGD with batch 32, lr
  0.1 and momentum 0.9, chosen on seed 0 at epsilon 8 (30 rounds) among: batch 16 lr 0.05: 0.744; batch 64 lr 0.2:
  0.789; batch 64 lr 0.5 clip 0.5: 0.811; batch 128 lr 1 clip 0.5: 0.797; with momentum 0.9 — batch 32 lr 0.1:
  0.858; batch 32 lr 0.2: 0.844; batch 64 lr 0.2: 0.833; batch 32 lr 0.1 clip 0.5: 0.794; batch 16 lr 0.05: 0.847;
  batch 64 lr 0.5 clip 0.5: 0.839 (non-private FedAvg on the same GroupNorm model: 0.972). DP-SGD cannot train BatchNorm (it mixes a
  batch's rows), so these runs use ``digits-cnn`` with ``norm: group``; FedAvg on that model without DP is
  reported beside them (``fedavg_groupnorm_acc``), as well as the figure's comparison with ``fedavg_acc``.
- **Poisoning**: client 0 sends ``global - 10 x (its update)`` every round. FedAvg, and each robust strategy
  (FedMedian, FedTrimmedAvg beta 0.2, Krum and Bulyan with one assumed attacker, MultiKrum keeping 5); the best of
  them by poisoned accuracy is ``poisoned_robust_acc``, and ``clean_acc`` is that same strategy with no attacker
  (all ten clients honest). A run whose clients all diverge (FedAvg under this attack can) stops at that round
  and reports its last evaluation; ``failed`` in ``results`` says when.
- **Homomorphic encryption** (TenSEAL CKKS, poly modulus 8192, one 60-bit data prime, two 13-bit values a slot):
  FedAvg with secure aggregation, the clients also sending their plaintext update for the audit only (not counted
  in the bytes). ``he_max_abs_diff``: the largest difference between the decrypted aggregate and the plaintext
  weighted sum of the same updates, over every round and seed. ``he_time_ratio``: median round wall-clock (the
  clients' local training included, the server's evaluation not) with HE over plaintext FedAvg, rounds 2 to 30
  of every seed (round 1 starts the workers); ``he_agg_time_ratio``: the server's aggregation alone (HE: sum,
  decrypt, decode; FedAvg: Flower's weighted average). ``he_bytes_ratio``: bytes sent per round, both ways.

Every run of one seed shares one start of Flower's simulation engine (``federate_many_``), their rounds
interleaved (round 1 of every run, then round 2, …) so that the machine's drift slows them alike; accuracies are
the mean over seeds, with each seed's value in ``results``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, after_first, pick, ratio_with_ci, write_results  # noqa: E402

LOCAL = {"epochs": 1, "batch_size": 16, "optimizer": "sgd", "optimizer_options": {"lr": 0.05}}
# DP-SGD's local training: chosen on seed 0 at epsilon 8 among ten settings of batch, lr, momentum and clip (the
# docstring lists them); seed 1 was not used for the choice
DP_LOCAL = {"epochs": 1, "batch_size": 32, "optimizer": "sgd", "optimizer_options": {"lr": 0.1, "momentum": 0.9}}
STRATEGIES = {"fedavg": {}, "fedprox": {"proximal_mu": 0.01}, "fedadam": {"eta": 0.01}, "scaffold": {}}
ROBUST = {"fedmedian": {}, "fedtrimmedavg": {"beta": 0.2}, "krum": {"num_malicious_nodes": 1},
          "multikrum": {"num_malicious_nodes": 1, "num_nodes_to_select": 5}, "bulyan": {"num_malicious_nodes": 1}}
EPSILONS = (1.0, 3.0, 8.0)
POISON = {"poisoned": [0], "scale": -10.0}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"clients": pick(args, full=10, quick=10, smoke=4), "rounds": pick(args, full=30, quick=5, smoke=1),
            "seeds": pick(args, full=[0, 1], quick=[0], smoke=[0]),
            "strategies": pick(args, full=list(STRATEGIES), quick=list(STRATEGIES), smoke=["fedavg", "scaffold"]),
            "robust": pick(args, full=list(ROBUST), quick=list(ROBUST), smoke=["fedmedian"]),
            "epsilons": pick(args, full=list(EPSILONS), quick=list(EPSILONS), smoke=[8.0])}


def model(seed: int, norm: str = "batch") -> torch.nn.Module:
    from nnforge.models import build

    torch.manual_seed(seed)
    return build("digits-cnn", norm=norm)


def central(data: Any, s: dict[str, Any], seed: int) -> float:
    """The same model, optimizer and batch size on all the rows: as many epochs as the federation has rounds."""
    from nnforge.federated import evaluate_global
    from nnforge.optim import build_optimizer
    from nnforge.train import TensorBatches, TrainConfig, fit

    net = model(seed)
    x, y = (torch.from_numpy(a) for a in data.splits["train"])
    steps = s["rounds"] * -(-len(y) // LOCAL["batch_size"])
    fit(net, TensorBatches(x, y, batch_size=LOCAL["batch_size"], seed=seed),
        config=TrainConfig(max_steps=steps, clip_norm=None, schedule="constant", device="cpu", seed=seed,
                           log_every=steps),
        optimizer=build_optimizer("sgd", net, lr=LOCAL["optimizer_options"]["lr"]))
    return float(evaluate_global(net, data)["accuracy"])


def runs_for(s: dict[str, Any], seed: int) -> list[tuple[str, torch.nn.Module, Any]]:
    from nnforge.federated import FederatedConfig

    def cfg(strategy: str = "fedavg", options: dict[str, Any] | None = None, local: dict[str, Any] = LOCAL,
            **extra: Any) -> FederatedConfig:
        return FederatedConfig(clients=s["clients"], rounds=s["rounds"], strategy=strategy,
                               strategy_options=options or {}, partition="dirichlet",
                               partition_options={"alpha": 0.5}, local=local, seed=seed, **extra)

    out = [(name, model(seed), cfg(name, STRATEGIES[name])) for name in s["strategies"]]
    out.append(("fedavg-groupnorm", model(seed, "group"), cfg()))
    out += [(f"dp-eps{eps:g}", model(seed, "group"), cfg(privacy={"epsilon": eps, "delta": 1e-5,
                                                                  "max_grad_norm": 1.0}, local=DP_LOCAL))
            for eps in s["epsilons"]]
    out.append(("he-fedavg", model(seed), cfg(secure={"audit_plaintext": True})))
    out.append(("poisoned-fedavg", model(seed), cfg(attack=POISON)))
    for name in s["robust"]:
        out.append((f"poisoned-{name}", model(seed), cfg(name, ROBUST[name], attack=POISON)))
        out.append((f"clean-{name}", model(seed), cfg(name, ROBUST[name])))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    s = settings(args)

    from nnforge.data import load
    from nnforge.federated import federate_many_

    data = load("digits")
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in s["seeds"]:
        t0 = time.perf_counter()
        acc: dict[str, Any] = {"central": central(data, s, seed)}
        runs = runs_for(s, seed)
        results = federate_many_([(m, c) for _, m, c in runs], data, progress=True, interleave=True)
        detail = {}
        for (name, _, _), result in zip(runs, results, strict=True):
            acc[name] = float(result.final["accuracy"])
            detail[name] = {"accuracy_per_round": [r.evaluation["accuracy"] if r.evaluation else None
                                                   for r in result.rounds],
                            "bytes_per_round": result.bytes_per_round, "seconds": result.seconds,
                            "round_seconds": [r.seconds for r in result.rounds],
                            "aggregation_seconds": [r.aggregation_seconds for r in result.rounds],
                            "he_max_abs_diff": max((r.secure.get("max_abs_diff", 0.0) for r in result.rounds
                                                    if r.secure), default=None),
                            "privacy": result.privacy, "stopped": result.stopped, "failed": result.failed,
                            "max_anomaly_poisoned_client": max(
                                (c.anomaly for r in result.rounds for c in r.clients
                                 if c.partition == 0 and c.anomaly is not None), default=None)}
        per_seed[seed] = {"accuracy": acc, "runs": detail, "seconds": time.perf_counter() - t0,
                          "partition": results[0].partition}
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in acc.items()), flush=True)

    def mean(key: str) -> float:
        return statistics.fmean(per_seed[x]["accuracy"][key] for x in s["seeds"])

    def pooled(run: str, key: str) -> list[float]:
        return after_first(per_seed[x]["runs"][run][key] for x in s["seeds"])

    he_time, he_time_ci = ratio_with_ci(pooled("he-fedavg", "round_seconds"), pooled("fedavg", "round_seconds"))
    he_agg, he_agg_ci = ratio_with_ci(pooled("he-fedavg", "aggregation_seconds"),
                                      pooled("fedavg", "aggregation_seconds"))
    he_bytes = statistics.fmean(per_seed[x]["runs"]["he-fedavg"]["bytes_per_round"] /
                                per_seed[x]["runs"]["fedavg"]["bytes_per_round"] for x in s["seeds"])
    robust_poisoned = {name: mean(f"poisoned-{name}") for name in s["robust"]}
    best = max(robust_poisoned, key=lambda k: robust_poisoned[k])
    summary: dict[str, Any] = {
        "central_acc": mean("central"),
        **{f"{name}_acc": mean(name) for name in s["strategies"]},
        "fedavg_groupnorm_acc": mean("fedavg-groupnorm"),
        **{f"dp_eps{eps:g}_acc": mean(f"dp-eps{eps:g}") for eps in s["epsilons"]},
        "poisoned_fedavg_acc": mean("poisoned-fedavg"),
        "poisoned_robust_acc": robust_poisoned[best], "best_robust_strategy": best,
        "clean_acc": mean(f"clean-{best}"),
        **{f"poisoned_{name}_acc": v for name, v in robust_poisoned.items()},
        "he_acc": mean("he-fedavg"),
        "he_max_abs_diff": max(per_seed[x]["runs"]["he-fedavg"]["he_max_abs_diff"] for x in s["seeds"]),
        "he_time_ratio": he_time, "he_time_ratio_ci": list(he_time_ci),
        "he_agg_time_ratio": he_agg, "he_agg_time_ratio_ci": list(he_agg_ci), "he_bytes_ratio": he_bytes,
        "seeds": len(s["seeds"]),
    }
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()})
    write_results("federated", "digits", args=args, results={"settings": s, "local": LOCAL, "dp_local": DP_LOCAL,
                                                             "per_seed": per_seed},
                  summary=summary, packages=("flwr", "opacus", "ray", "tenseal"),
                  no_ci={"he_bytes_ratio": "deterministic: the ciphertexts' and the arrays' sizes"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
