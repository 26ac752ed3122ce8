"""Benchmark: many simulated clients on 2 cores — the char-GPT trained by 10 and by 50 clients with Flower's
simulation engine, peak memory and time per round reported.

    python benchmarks/federated/scale.py            # full: 10 and 50 clients, 5 rounds each (~10 min)
    python benchmarks/federated/scale.py --quick    # 10 and 50 clients, 2 rounds
    python benchmarks/federated/scale.py --smoke    # a tiny char-GPT, 4 clients, 1 round; writes nothing

Setup: shakespeare-char's train part cut into spans of 8,192 characters, dealt IID to the clients (seeded);
``char-gpt`` (4 layers, 4 heads, 128 wide, context 64); each round every client takes 10 AdamW steps (lr 3e-3,
batch 12) from the global model; FedAvg. Flower's Ray backend runs two clients at a time (one CPU each).

Memory: the resident set of this process and every process under it (Ray's raylet, GCS, workers and the actors
running the clients), sampled every 0.2 s by a thread from before the engine starts to after it stops; the
peak of that sum is ``peak_rss_mb``. What is measured is the whole simulation as a user would run it, not a
model. Flower's users report memory blow-ups at 50+ simulated clients; ``memory_ratio_50_over_10`` says how the
peak grew from 10 to 50 clients here. No peer is run beside it (Flower itself is the engine).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, pick, write_results  # noqa: E402


class PeakRSS:
    """The largest summed resident set of this process and its descendants, sampled in a thread."""

    def __init__(self, every_s: float = 0.2) -> None:
        import psutil

        self.me, self.every_s, self.peak, self._stop = psutil.Process(), every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> int:
        import psutil

        total = 0
        for p in [self.me, *self.me.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        return total

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._sample())
            self._stop.wait(self.every_s)

    def __enter__(self) -> PeakRSS:
        self.baseline = self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    clients = pick(args, full=[10, 50], quick=[10, 50], smoke=[4])  # smoke: one engine start (about 15 s)
    rounds = pick(args, full=5, quick=2, smoke=1)
    steps = pick(args, full=10, quick=10, smoke=2)
    options = pick(args, full={}, quick={}, smoke={"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 16})

    from nnforge.data import load
    from nnforge.federated import FederatedConfig, federate_
    from nnforge.models import build

    corpus = load("shakespeare-char")
    out: dict[str, Any] = {}
    for n in clients:
        torch.manual_seed(0)
        model = build("char-gpt", vocab_size=corpus.vocab_size, **options)
        config = FederatedConfig(clients=n, rounds=rounds, partition="iid", eval_batches=pick(args, full=20, quick=10,
                                                                                               smoke=2),
                                 local={"steps": steps, "batch_size": 12, "optimizer": "adamw",
                                        "optimizer_options": {"lr": 3e-3, "weight_decay": 0.1}})
        t0 = time.perf_counter()
        with PeakRSS() as mem:
            result = federate_(model, corpus, config, progress=True)
        out[str(n)] = {"peak_rss_mb": mem.peak / 2**20, "baseline_rss_mb": mem.baseline / 2**20,
                       "seconds": time.perf_counter() - t0, "round_seconds": [r.seconds for r in result.rounds],
                       "val_loss_per_round": [r.evaluation["loss"] if r.evaluation else None for r in result.rounds],
                       "bytes_per_round": result.bytes_per_round, "replied": [r.replied for r in result.rounds]}
        print(f"{n} clients: peak {mem.peak / 2**20:.0f} MB, {time.perf_counter() - t0:.0f} s, "
              f"val loss {result.final['loss']:.4f}", flush=True)
    small, large = out[str(clients[0])], out[str(clients[-1])]
    summary = {"clients": clients[-1], "peak_rss_mb": large["peak_rss_mb"],
               f"peak_rss_mb_{clients[0]}_clients": small["peak_rss_mb"],
               "memory_ratio_50_over_10": large["peak_rss_mb"] / small["peak_rss_mb"],
               "median_round_s": sorted(large["round_seconds"])[len(large["round_seconds"]) // 2],
               "all_replied": all(x == clients[-1] for x in large["replied"]),
               "final_val_loss": large["val_loss_per_round"][-1]}
    print(summary)
    write_results("federated", "scale", args=args, results=out, summary=summary, packages=("flwr", "ray"),
                  no_ci={"memory_ratio_50_over_10": "one peak each: a maximum over the run, not a repeated timing"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
