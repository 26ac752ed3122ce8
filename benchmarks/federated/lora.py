"""Benchmark: federated LoRA against full-model FedAvg on the quickstart task — what travels, and what it costs in
accuracy.

    python benchmarks/federated/lora.py            # full: 2 seeds, 5 clients, 10 rounds, both jobs (~50 min on 2 cores)
    python benchmarks/federated/lora.py --quick    # one seed, 3 rounds
    python benchmarks/federated/lora.py --smoke    # 2 passages a play, 1 round of one step; writes nothing

Setup (the issue's): the quickstart task — 4-line Shakespeare passages labelled comedy, tragedy or history
(``shakespeare-genre``, 100 passages a play; the 26 training plays dealt whole to 5 clients by the ``source``
partitioner, seeded; the 600 passages of the 6 test plays are the server's evaluation) — on all-MiniLM-L6-v2
with a fresh 3-way head, 10 rounds of FedAvg, 10 local AdamW steps of batch 16 per client per round (160
passages, about a third of a client's plays), every client every round; the global model is evaluated after rounds
5 and 10. The two jobs run in one start of Flower's simulation engine, their rounds interleaved. (One local epoch a
round and an evaluation every round measured about 75 minutes a seed on 2 cores: full MiniLM steps cost about 3 s
each on one core.)

- **Federated LoRA**: PEFT LoRA (r 8, alpha 16) on every linear layer of transformer layers 3-5, the quickstart's
  adapter, and the head train; the rest of MiniLM is frozen and never leaves the clients' copy of the shared
  checkpoint. Only the trainable tensors travel (``share: auto`` resolves to ``trainable``). AdamW lr 5e-4 (the
  quickstart's LoRA learning rate).
- **Full-model FedAvg**: every weight trains and travels. AdamW lr 5e-5 (the usual rate for fine-tuning a BERT-size
  encoder in full; a LoRA-size rate diverges).

``bytes_ratio``: bytes sent per round, both ways, LoRA over full (deterministic: the arrays' sizes).
``lora_acc`` / ``full_acc``: the global model's accuracy on the test plays after the last round, the mean over
seeds (each seed's value and every round's in ``results``). Chance is 0.333; the centralised quickstart
fine-tune reaches about 0.47 on these plays.
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

from _common import add_mode_args, pick, write_results  # noqa: E402

LORA = {"r": 8, "alpha": 16, "layers": [3, 4, 5]}
LOCAL = {"lora": {"batch_size": 16, "optimizer": "adamw", "optimizer_options": {"lr": 5e-4}},
         "full": {"batch_size": 16, "optimizer": "adamw", "optimizer_options": {"lr": 5e-5}}}


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"clients": pick(args, full=5, quick=5, smoke=2), "rounds": pick(args, full=10, quick=3, smoke=1),
            "seeds": pick(args, full=[0, 1], quick=[0], smoke=[0]),
            "passages_per_play": pick(args, full=100, quick=100, smoke=2),
            "local_steps": pick(args, full=10, quick=10, smoke=1)}


def model(seed: int, lora: bool) -> torch.nn.Module:
    from nnforge import models

    torch.manual_seed(seed)
    net = models.load("minilm", num_classes=3, seed=seed)
    if lora:
        from nnforge.adapt.lora import LoraConfig, apply_lora_

        apply_lora_(net, LoraConfig(**LORA))  # type: ignore[arg-type]
    return net  # type: ignore[return-value]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    s = settings(args)

    from nnforge.data import load
    from nnforge.federated import FederatedConfig, federate_many_

    data = load("shakespeare-genre", passages_per_play=s["passages_per_play"])
    per_seed: dict[int, dict[str, Any]] = {}
    for seed in s["seeds"]:
        t0 = time.perf_counter()
        runs = []
        for name in ("lora", "full"):
            net = model(seed, lora=name == "lora")
            trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
            runs.append((name, net, trainable, FederatedConfig(
                clients=s["clients"], rounds=s["rounds"], strategy="fedavg", partition="source",
                local={**LOCAL[name], "steps": s["local_steps"]}, eval_every=5, seed=seed)))
        results = federate_many_([(m, c) for _, m, _, c in runs], data, progress=True, interleave=True)
        per_seed[seed] = {"seconds": time.perf_counter() - t0, "partition": results[0].partition}
        for (name, net, trainable, _), result in zip(runs, results, strict=True):
            per_seed[seed][name] = {
                "accuracy": float(result.final["accuracy"]), "loss": float(result.final["loss"]),
                "accuracy_per_round": [r.evaluation["accuracy"] if r.evaluation else None for r in result.rounds],
                "bytes_per_round": result.bytes_per_round, "seconds": result.seconds,
                "round_seconds": [r.seconds for r in result.rounds], "failed": result.failed,
                "trainable_parameters": trainable, "parameters": sum(p.numel() for p in net.parameters())}
        print(f"seed {seed}: lora {per_seed[seed]['lora']['accuracy']:.3f}, full {per_seed[seed]['full']['accuracy']:.3f}",
              flush=True)

    def mean(name: str, key: str) -> float:
        return statistics.fmean(per_seed[x][name][key] for x in s["seeds"])

    summary: dict[str, Any] = {
        "lora_acc": mean("lora", "accuracy"), "full_acc": mean("full", "accuracy"),
        "bytes_ratio": mean("lora", "bytes_per_round") / mean("full", "bytes_per_round"),
        "lora_bytes_per_round": mean("lora", "bytes_per_round"), "full_bytes_per_round": mean("full", "bytes_per_round"),
        "time_ratio": mean("lora", "seconds") / mean("full", "seconds"), "seeds": len(s["seeds"]),
    }
    summary["accuracy_loss_points"] = 100 * (summary["full_acc"] - summary["lora_acc"])
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()})
    write_results("federated", "lora", args=args, results={"settings": s, "lora": LORA, "local": LOCAL,
                                                           "per_seed": per_seed},
                  summary=summary, packages=("flwr", "peft", "ray", "transformers"),
                  no_ci={"bytes_ratio": "deterministic: the arrays' sizes",
                         "lora_bytes_per_round": "deterministic", "full_bytes_per_round": "deterministic",
                         "time_ratio": "whole-job wall-clock of two interleaved jobs, one run per seed",
                         "accuracy_loss_points": "mean over seeds; each seed's accuracies are in results"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
