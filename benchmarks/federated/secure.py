"""Benchmark: secure aggregation two ways — homomorphic encryption (TenSEAL CKKS, nnforge's packing) against
Flower's SecAgg+ (masking with secret sharing) — each against plaintext FedAvg on the same clients.

    python benchmarks/federated/secure.py            # full: 2 seeds, 10 clients, 30 rounds, three jobs (~10 min)
    python benchmarks/federated/secure.py --quick    # one seed, 5 rounds
    python benchmarks/federated/secure.py --smoke    # 3 clients, 1 round; writes nothing

Setup: ``benchmarks/federated/digits.py``'s (the digits CNN, 10 clients, Dirichlet 0.5, one local SGD epoch a
round). The three jobs share one start of Flower's simulation engine, their rounds interleaved.

- **HE**: the clients' weighted updates packed (two 13-bit values a slot), CKKS-encrypted with the key holder's
  public context (poly modulus 8192), summed by the server, decrypted by the key holder: one exchange a round.
- **SecAgg+**: Flower's ``SecAggPlusWorkflow`` and ``secaggplus_mod`` as Flower ships them (every client shares
  its secrets with all the others, threshold half of them; weights clipped to ±8 and quantized to 2^22 levels):
  four exchanges a round (set-up, key shares, masked models, unmasking).

Each client also sends its plaintext contribution for the audit only (not counted in the bytes): ``*_max_abs_diff``
is the largest difference from the exact aggregate over every round and seed — HE's on the summed update, SecAgg+'s
on the averaged model. ``*_time_ratio``: median round wall-clock (the clients' training included, the server's
evaluation not) over plaintext FedAvg's, rounds 2.. of every seed; ``*_bytes_ratio``: bytes per round both ways
over plaintext's (SecAgg+'s stage messages included). Accuracies: the mean over seeds after the last round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, after_first, pick, ratio_with_ci, write_results  # noqa: E402

LOCAL = {"epochs": 1, "batch_size": 16, "optimizer": "sgd", "optimizer_options": {"lr": 0.05}}
SECURE = {"fedavg": None, "he": {"method": "he", "audit_plaintext": True},
          "secagg": {"method": "secagg+", "audit_plaintext": True}}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"clients": pick(args, full=10, quick=10, smoke=3), "rounds": pick(args, full=30, quick=5, smoke=1),
            "seeds": pick(args, full=[0, 1], quick=[0], smoke=[0])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    s = settings(args)

    from nnforge.data import load
    from nnforge.federated import FederatedConfig, federate_many_
    from nnforge.models import build

    data = load("digits")
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in s["seeds"]:
        runs = []
        for secure in SECURE.values():
            torch.manual_seed(seed)
            runs.append((build("digits-cnn"), FederatedConfig(
                clients=s["clients"], rounds=s["rounds"], partition="dirichlet", partition_options={"alpha": 0.5},
                local=LOCAL, seed=seed, secure=secure)))
        results = federate_many_(runs, data, progress=True, interleave=True)
        per_seed[seed] = {name: {
            "accuracy": float(r.final["accuracy"]), "bytes_per_round": r.bytes_per_round, "failed": r.failed,
            "round_seconds": [x.seconds for x in r.rounds], "aggregation_seconds": [x.aggregation_seconds for x in r.rounds],
            "max_abs_diff": max((x.secure.get("max_abs_diff", 0.0) for x in r.rounds if x.secure), default=None),
            "accuracy_per_round": [x.evaluation["accuracy"] if x.evaluation else None for x in r.rounds]}
            for name, r in zip(SECURE, results, strict=True)}
        print(f"seed {seed}: " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in per_seed[seed].items()), flush=True)

    def pooled(name: str) -> list[float]:
        return after_first(per_seed[x][name]["round_seconds"] for x in s["seeds"])

    def mean(name: str, key: str) -> float:
        return statistics.fmean(per_seed[x][name][key] for x in s["seeds"])

    summary: dict[str, Any] = {f"{name}_acc": mean(name, "accuracy") for name in SECURE}
    for name in ("he", "secagg"):
        ratio, ci = ratio_with_ci(pooled(name), pooled("fedavg"))
        summary[f"{name}_time_ratio"], summary[f"{name}_time_ratio_ci"] = ratio, list(ci)
        summary[f"{name}_bytes_ratio"] = mean(name, "bytes_per_round") / mean("fedavg", "bytes_per_round")
        summary[f"{name}_max_abs_diff"] = max(per_seed[x][name]["max_abs_diff"] for x in s["seeds"])
    ratio, ci = ratio_with_ci(pooled("secagg"), pooled("he"))
    summary["secagg_over_he_time_ratio"], summary["secagg_over_he_time_ratio_ci"] = ratio, list(ci)
    summary["seeds"] = len(s["seeds"])
    print({k: (round(v, 5) if isinstance(v, float) else v) for k, v in summary.items()})
    write_results("federated", "secure", args=args, results={"settings": s, "local": LOCAL, "secure": SECURE,
                                                             "per_seed": per_seed},
                  summary=summary, packages=("flwr", "ray", "tenseal"),
                  no_ci={"he_bytes_ratio": "deterministic: the messages' sizes",
                         "secagg_bytes_ratio": "deterministic: the messages' sizes"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
