"""Benchmark: a model cascade on digits — the int8 ``digits-mlp`` answers; what it is unsure of goes to the fp32
``digits-cnn``; what that one is unsure of goes to a person (simulated by the true label) — against the large
model answering everything alone.

    python benchmarks/serve/cascade.py            # full: 5 seeds (about 40 s on 2 shared cores)
    python benchmarks/serve/cascade.py --quick    # 3 seeds, 120 test requests replayed one at a time
    python benchmarks/serve/cascade.py --smoke    # 1 seed, 10 training steps, a coarse threshold grid; writes nothing

Data: scikit-learn digits through ``nnforge.data.load("digits")`` (stratified 80/20 split, seed 0): the 360 test
rows are fixed; per seed, a stratified quarter of the 1,437 training rows (359 rows, ``random_state`` = the seed)
is the validation split and the rest (1,078 rows) trains both models. Models: ``build("digits-mlp")`` and
``build("digits-cnn")``, each seeded, trained with ``nnforge.train.fit`` as the ``digits`` recipe trains (AdamW lr
3e-3, weight decay 0.01, batch 64, 300 steps, cosine schedule with 20 warm-up steps, clipping at 1.0); the MLP
is then quantized in place with ``quantize_(mlp, Int8WeightOnlyConfig())``.

Cascade (``nnforge.deploy.cascade``): small (local tier, the int8 MLP) -> large (local tier, the fp32 CNN, capped
at 50% of requests) -> human (oracle tier returning the true label, capped at 10% of requests). Thresholds are
chosen on the validation split by ``choose_thresholds``: the default rule, ``most-accurate`` (the highest
validation accuracy the caps allow; among those, the fewest inputs for the person, then for the large model), is
the headline. The ``cheapest`` rule (the fewest inputs for the person, then the large model, whose validation
accuracy is still at least the large model's alone) is reported beside it as ``cheapest_rule_*``: it stops at
the bar on validation data, so on the test rows it lands on either side of it.

Reported on the test rows, per seed and as medians over seeds:

- accuracy of the cascade (one batch of all 360 requests; caps over that batch) and of each model alone;
- the share of requests each tier answered (``*_share``) and was asked (``*_reached_share``: the large model is
  asked about everything it answers plus what it passes to the person);
- the accuracy of what each tier answered, pooled over seeds (``*_tier_acc``);
- ``cascade_vs_large_acc_diff``: cascade minus large-alone accuracy, mean over seeds, with a 95% bootstrap interval
  over test rows (the same rows resampled for every seed; paired: both answer the same rows);
  ``large_vs_small_acc_diff`` likewise (the large model must be measurably more accurate than the small one);
- cost, measured: the test rows are replayed one request at a time (a fresh cascade, the rows in a seeded random
  order, caps counted over the requests served so far), each cascade request interleaved with one request to the
  large model alone; per tier, the median wall-clock of a call (``*_latency_ms``: one input per call), the
  cascade's median and mean milliseconds per request, and ``cascade_latency_ratio`` (median cascade request over
  median large-alone request, pooled over seeds, bootstrap interval). The person's cost is their share of
  requests (``human_share``: reviews per request); the oracle's lookup time is not a person's time. The replay's
  own accuracy and shares are reported as ``streaming_*``. Both models are so small that a call costs about the
  same fixed overhead whichever runs, so a hardware-free cost is reported beside the times: FLOPs per input of
  each architecture (torch's ``FlopCounterMode``), the cascade's mean FLOPs per request (small + the large
  model's reached share x large, mean over seeds) and that over the large model's (``cascade_flops_fraction``).

Timings use one intra-op thread (tiny models; the machine is shared).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, pick, ratio_with_ci, spread, write_results  # noqa: E402

TRAIN = {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.01, "batch_size": 64, "schedule": "cosine",
         "warmup_steps": 20, "clip_norm": 1.0}  # the digits recipe's (src/nnforge/recipes/builtin/digits.yaml)
VAL_FRACTION = 0.25
LARGE_CAP, HUMAN_CAP = 0.5, 0.10
BOOT = 2000


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"seeds": pick(args, full=[0, 1, 2, 3, 4], quick=[0, 1, 2], smoke=[0]),
            "steps": pick(args, full=300, quick=300, smoke=10),
            "grid": pick(args, full=64, quick=64, smoke=8),
            "replay_rows": pick(args, full=None, quick=120, smoke=20)}


# --- models -------------------------------------------------------------------------------------------------------


def train(arch: str, x: torch.Tensor, y: torch.Tensor, seed: int, steps: int) -> torch.nn.Module:
    from nnforge.models import build
    from nnforge.optim import build_optimizer
    from nnforge.train import TensorBatches, TrainConfig, fit

    torch.manual_seed(seed)
    net = build(arch)
    fit(net, TensorBatches(x, y, batch_size=TRAIN["batch_size"], seed=seed),
        config=TrainConfig(max_steps=steps, schedule=TRAIN["schedule"], warmup_steps=min(TRAIN["warmup_steps"], steps),
                           clip_norm=TRAIN["clip_norm"], device="cpu", seed=seed, log_every=steps),
        optimizer=build_optimizer(TRAIN["optimizer"], net, lr=TRAIN["lr"], weight_decay=TRAIN["weight_decay"]))
    return net.eval()


def probabilities(net: torch.nn.Module, x: torch.Tensor):  # type: ignore[no-untyped-def]
    """``predict`` for a local tier over row indices into ``x``."""

    def predict(index: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(x[torch.from_numpy(np.asarray(index, dtype=np.int64))]).softmax(-1).numpy()

    return predict


def flops_per_input(arch: str) -> int:
    """Floating-point operations of one input through the fp32 architecture (torch's FlopCounterMode: matmuls and
    convolutions, 2 per multiply-add); the int8 MLP does the same multiply-adds on int8 weights."""
    from torch.utils.flop_counter import FlopCounterMode

    from nnforge.models import build

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        build(arch).eval()(torch.zeros(1, 1, 8, 8))
    return int(counter.get_total_flops())


def accuracy(predict: Any, n: int, y: np.ndarray) -> np.ndarray:
    """Per-row correctness of a model answering every row alone."""
    return predict(np.arange(n)).argmax(1) == y


# --- one seed -----------------------------------------------------------------------------------------------------


def cascade_config() -> Any:
    from nnforge.deploy.cascade import CascadeConfig

    return CascadeConfig(tiers=[{"name": "small", "kind": "local"},
                                {"name": "large", "kind": "local", "max_share": LARGE_CAP},
                                {"name": "human", "kind": "human", "max_share": HUMAN_CAP}])


def objects(small: Any, large: Any, labels: list[str], truth: np.ndarray) -> dict[str, dict[str, Any]]:
    return {"small": {"predict": small, "labels": labels}, "large": {"predict": large, "labels": labels},
            "human": {"oracle": lambda index: [labels[truth[i]] for i in index]}}


def replay(config: Any, objs: dict[str, Any], large: Any, rows: np.ndarray, labels: list[str], y: np.ndarray,
           seed: int) -> dict[str, Any]:
    """Requests one at a time, each cascade request interleaved with one to the large model alone (seeded order)."""
    from nnforge.deploy.cascade import Cascade, CascadeResult

    cascade = Cascade(config, objs)
    rng = random.Random(seed)
    results, cascade_ms, large_ms = [], [], []
    for i in rows:
        one = np.array([i])
        for who in rng.sample(["cascade", "large"], 2):
            t0 = time.perf_counter()
            if who == "cascade":
                results.append(cascade.run(one, truth=[labels[y[i]]]))
                cascade_ms.append((time.perf_counter() - t0) * 1e3)
            else:
                large(one)
                large_ms.append((time.perf_counter() - t0) * 1e3)
    combined = CascadeResult.combine(results)
    return {"result": combined, "cascade_ms": cascade_ms, "large_ms": large_ms}


def run_seed(data: Any, s: dict[str, Any], seed: int) -> dict[str, Any]:
    from sklearn.model_selection import train_test_split

    from nnforge.compress import Int8WeightOnlyConfig, quantize_
    from nnforge.deploy.cascade import Cascade, choose_thresholds, oracle_answers

    t0 = time.perf_counter()
    labels = list(data.label_names)
    x_all, y_all = data.splits["train"]
    x_tr, x_val, y_tr, y_val = train_test_split(x_all, y_all, test_size=VAL_FRACTION, stratify=y_all,
                                                random_state=seed)
    x_te, y_te = data.splits["test"]
    xv, xt = torch.from_numpy(x_val), torch.from_numpy(x_te)
    mlp = train("digits-mlp", torch.from_numpy(x_tr), torch.from_numpy(y_tr), seed, s["steps"])
    small_fp32_correct = accuracy(probabilities(mlp, xt), len(y_te), y_te)
    report = quantize_(mlp, Int8WeightOnlyConfig())
    cnn = train("digits-cnn", torch.from_numpy(x_tr), torch.from_numpy(y_tr), seed, s["steps"])
    small_val, large_val = probabilities(mlp, xv), probabilities(cnn, xv)
    small_te, large_te = probabilities(mlp, xt), probabilities(cnn, xt)

    config = cascade_config()
    val_truth = [labels[v] for v in y_val]
    val_cascade = Cascade(config, objects(small_val, large_val, labels, y_val))
    answers = val_cascade.answer_all(np.arange(len(y_val)), skip=["human"]) | {"human": oracle_answers(val_truth)}
    choices = {rule: choose_thresholds(config, answers, val_truth, rule=rule, grid=s["grid"])
               for rule in ("most-accurate", "cheapest")}

    test_truth = [labels[v] for v in y_te]
    large_correct = accuracy(large_te, len(y_te), y_te)
    small_correct = accuracy(small_te, len(y_te), y_te)
    tests = {rule: Cascade(c.config, objects(small_te, large_te, labels, y_te)).run(np.arange(len(y_te)), test_truth)
             for rule, c in choices.items()}
    rows = np.random.default_rng(seed).permutation(len(y_te))[:s["replay_rows"]]
    served = replay(choices["most-accurate"].config, objects(small_te, large_te, labels, y_te), large_te, rows,
                    labels, y_te, seed)
    out = {"small_fp32_correct": small_fp32_correct, "small_correct": small_correct, "large_correct": large_correct,
           "cascade_correct": {rule: np.array([bool(a.correct) for a in r.answers]) for rule, r in tests.items()},
           "tests": tests, "choices": choices, "served": served, "int8": report,
           "val_large_acc": float(np.mean([a.label == t for a, t in zip(answers["large"], val_truth, strict=True)])),
           "val_small_acc": float(np.mean([a.label == t for a, t in zip(answers["small"], val_truth, strict=True)])),
           "seconds": time.perf_counter() - t0}
    r = tests["most-accurate"]
    print(f"seed {seed}: cascade {r.accuracy:.4f} vs large {large_correct.mean():.4f} (small {small_correct.mean():.4f}); "
          f"shares " + ", ".join(f"{t.name} {t.share:.3f}" for t in r.tiers)
          + f"; thresholds {choices['most-accurate'].thresholds}; {out['seconds']:.1f}s", flush=True)
    return out


# --- summary ------------------------------------------------------------------------------------------------------


def paired_diff_ci(a: list[np.ndarray], b: list[np.ndarray], seed: int = 0) -> tuple[float, tuple[float, float]]:
    """Mean over seeds of mean(a - b) over the test rows, and its 95% bootstrap interval (rows resampled, the same
    rows for every seed)."""
    d = np.stack([x.astype(float) - y.astype(float) for x, y in zip(a, b, strict=True)])  # (seeds, rows)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, d.shape[1], size=(BOOT, d.shape[1]))
    boots = d[:, idx].mean(axis=2).mean(axis=0)  # (BOOT,)
    point = float(d.mean())
    lo, hi = (float(v) for v in np.quantile(boots, [0.025, 0.975]))
    return point, (min(lo, point), max(hi, point))


def pooled_tier_acc(results: list[Any], tier: str) -> float | None:
    answered = [a for r in results for a in r.answers if a.tier == tier and a.correct is not None]
    return sum(a.correct for a in answered) / len(answered) if answered else None


def summarise(per_seed: list[dict[str, Any]], flops: dict[str, int]) -> dict[str, Any]:
    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    main = [p["tests"]["most-accurate"] for p in per_seed]
    cheap = [p["tests"]["cheapest"] for p in per_seed]
    served = [p["served"]["result"] for p in per_seed]
    diff, diff_ci = paired_diff_ci([p["cascade_correct"]["most-accurate"] for p in per_seed],
                                   [p["large_correct"] for p in per_seed])
    cheap_diff, cheap_ci = paired_diff_ci([p["cascade_correct"]["cheapest"] for p in per_seed],
                                          [p["large_correct"] for p in per_seed], seed=1)
    gap, gap_ci = paired_diff_ci([p["large_correct"] for p in per_seed], [p["small_correct"] for p in per_seed],
                                 seed=2)
    cascade_ms = [v for p in per_seed for v in p["served"]["cascade_ms"]]
    large_ms = [v for p in per_seed for v in p["served"]["large_ms"]]
    latency, latency_ci = ratio_with_ci(cascade_ms, large_ms)
    out: dict[str, Any] = {
        "cascade_acc": med([r.accuracy for r in main]),
        "large_alone_acc": med([float(p["large_correct"].mean()) for p in per_seed]),
        "small_alone_acc": med([float(p["small_correct"].mean()) for p in per_seed]),
        "small_fp32_acc": med([float(p["small_fp32_correct"].mean()) for p in per_seed]),
        "cascade_vs_large_acc_diff": diff, "cascade_vs_large_acc_diff_ci": list(diff_ci),
        "large_vs_small_acc_diff": gap, "large_vs_small_acc_diff_ci": list(gap_ci),
    }
    for tier in ("small", "large", "human"):
        out[f"{tier}_share"] = med([r.tier(tier).share for r in main])
        out[f"{tier}_reached_share"] = med([r.tier(tier).reached_share for r in main])
        out[f"{tier}_tier_acc"] = pooled_tier_acc(main, tier)
    out |= {
        "max_large_share": max(r.tier("large").share for r in main),
        "max_large_reached_share": max(r.tier("large").reached_share for r in main),
        "max_human_share": max(r.tier("human").share for r in main),
        "val_cascade_acc": med([p["choices"]["most-accurate"].accuracy for p in per_seed]),
        "val_large_alone_acc": med([p["val_large_acc"] for p in per_seed]),
        "small_min_confidence": med([p["choices"]["most-accurate"].thresholds["small"] for p in per_seed]),
        "large_min_confidence": med([p["choices"]["most-accurate"].thresholds["large"] for p in per_seed]),
        "cheapest_rule_cascade_acc": med([r.accuracy for r in cheap]),
        "cheapest_rule_small_share": med([r.tier("small").share for r in cheap]),
        "cheapest_rule_large_share": med([r.tier("large").share for r in cheap]),
        "cheapest_rule_large_reached_share": med([r.tier("large").reached_share for r in cheap]),
        "cheapest_rule_human_share": med([r.tier("human").share for r in cheap]),
        "cheapest_rule_vs_large_acc_diff": cheap_diff, "cheapest_rule_vs_large_acc_diff_ci": list(cheap_ci),
        "streaming_cascade_acc": med([r.accuracy for r in served]),
        "streaming_large_share": med([r.tier("large").share for r in served]),
        "streaming_human_share": med([r.tier("human").share for r in served]),
        "small_latency_ms": med([r.tier("small").latency_ms for r in served]),
        "large_latency_ms": med([r.tier("large").latency_ms for r in served if r.tier("large").calls]),
        "cascade_ms_per_request": statistics.median(cascade_ms),
        "cascade_mean_ms_per_request": statistics.fmean(cascade_ms),
        "large_alone_ms_per_request": statistics.median(large_ms),
        "large_alone_mean_ms_per_request": statistics.fmean(large_ms),
        "cascade_latency_ratio": latency, "cascade_latency_ratio_ci": list(latency_ci),
        "small_flops_per_input": flops["small"], "large_flops_per_input": flops["large"],
        "cascade_flops_per_request": statistics.fmean(flops["small"] + r.tier("large").reached_share * flops["large"]
                                                      for r in main),
    }
    out |= {
        "cascade_flops_fraction": out["cascade_flops_per_request"] / flops["large"],
        "seeds": len(per_seed), "test_rows": len(per_seed[0]["large_correct"]),
    }
    return out


def seed_record(p: dict[str, Any]) -> dict[str, Any]:
    return {"small_fp32_acc": float(p["small_fp32_correct"].mean()), "small_alone_acc": float(p["small_correct"].mean()),
            "large_alone_acc": float(p["large_correct"].mean()), "val_small_acc": p["val_small_acc"],
            "val_large_acc": p["val_large_acc"], "seconds": p["seconds"],
            "int8": {"bytes_before": p["int8"].bytes_before, "bytes_after": p["int8"].bytes_after,
                     "skipped": [list(x) for x in p["int8"].skipped]},
            "thresholds": {rule: c.to_dict() for rule, c in p["choices"].items()},
            "test": {rule: r.to_dict() for rule, r in p["tests"].items()},
            "streaming": p["served"]["result"].to_dict(),
            "cascade_ms_per_request": spread(p["served"]["cascade_ms"]),
            "large_alone_ms_per_request": spread(p["served"]["large_ms"])}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    s = settings(args)
    torch.set_num_threads(1)  # tiny models: one intra-op thread is fastest on a shared CPU

    from nnforge.data import load

    data = load("digits")
    per_seed = [run_seed(data, s, seed) for seed in s["seeds"]]
    summary = summarise(per_seed, {"small": flops_per_input("digits-mlp"), "large": flops_per_input("digits-cnn")})
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()})
    peers = {"large-alone": {"model": "digits-cnn", "precision": "fp32", "answers": "every request",
                             "training": TRAIN, "threads": 1}}
    write_results("serve", "cascade", args=args, peers=peers, packages=("scikit-learn",),
                  results={"settings": s, "training": TRAIN, "val_fraction": VAL_FRACTION,
                           "caps": {"large": LARGE_CAP, "human": HUMAN_CAP},
                           "per_seed": {str(seed): seed_record(p) for seed, p in zip(s["seeds"], per_seed, strict=True)}},
                  summary=summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
