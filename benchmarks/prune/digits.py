"""Benchmark: structured channel pruning of the digits CNN, with recovery training.

    python benchmarks/prune/digits.py           # full: 3 seeds, 600 training + 300 recovery steps
    python benchmarks/prune/digits.py --quick   # 1 seed, 150 + 60 steps (under a minute)
    python benchmarks/prune/digits.py --smoke   # 1 seed, 6 + 3 steps, few timing rounds; writes nothing

Protocol, per seed: ``digits-cnn`` (scikit-learn's 8x8 digits, stratified 80/20 split, seed 0) trained with AdamW
(cosine schedule); then ``StructuredPruneConfig(channels=0.5, ffn=0.5)`` removes half of each conv's output
channels and half of the head's hidden units, ranked by magnitude, physically (smaller convs, BatchNorms and
Linears: no mask); then recovery training of the pruned model on the same training data. Test accuracy of
dense and pruned on the same items (paired bootstrap interval of the drop, pooled over seeds); latency of
dense and pruned (eval mode, PyTorch, the same process, interleaved rounds) on the whole test set in one
batch (``speedup``) and on one image (``speedup_b1``); parameters and safetensors file size.

Writes benchmarks/results/prune_digits.json (full) or prune_digits.quick.json.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, mode, pick, ratio_with_ci, spread, write_results  # noqa: E402

BATCH = 64
LR, RECOVERY_LR = 3e-3, 1e-3
PRUNE = {"channels": 0.5, "ffn": 0.5, "heads": 0.0, "criterion": "magnitude"}


def train(model: torch.nn.Module, data: Any, steps: int, lr: float, seed: int) -> torch.nn.Module:
    from nnforge.train import TensorBatches, TrainConfig, fit

    x, y = (torch.from_numpy(a) for a in data.splits["train"])
    config = TrainConfig(max_steps=steps, lr=lr, schedule="cosine", warmup_steps=steps // 20, clip_norm=1.0,
                         log_every=10_000, seed=seed, device="cpu")
    fit(model, TensorBatches(x, y, batch_size=BATCH, seed=seed), config=config)
    return model.eval()


def correct(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(x).argmax(-1) == y


def file_mb(model: torch.nn.Module, tmp: Path, name: str) -> float:
    from safetensors.torch import save_file

    from nnforge.hardware import file_size_mb

    path = tmp / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return file_size_mb(path)


def run_seed(data: Any, seed: int, steps: int, recovery: int, rounds: int, tmp: Path) -> dict[str, Any]:
    from nnforge.compress import prune_
    from nnforge.compress.prune.structured import StructuredPruneConfig
    from nnforge.hardware import interleave
    from nnforge.models import build

    torch.manual_seed(seed)
    dense = train(build("digits-cnn"), data, steps, LR, seed)
    pruned = copy.deepcopy(dense)
    report = prune_(pruned, StructuredPruneConfig(**PRUNE))
    xt, yt = (torch.from_numpy(a) for a in data.splits["test"])
    acc_no_recovery = float(correct(pruned, xt, yt).float().mean())
    train(pruned, data, recovery, RECOVERY_LR, seed)
    ok_dense, ok_pruned = correct(dense, xt, yt), correct(pruned, xt, yt)
    one = xt[:1]
    t = interleave({"dense": lambda: dense(xt), "pruned": lambda: pruned(xt)}, rounds=rounds, warmup=3, seed=seed)
    t.update(interleave({"dense_b1": lambda: dense(one), "pruned_b1": lambda: pruned(one)},
                        rounds=rounds, calls_per_round=50, warmup=3, seed=seed))  # one image: too short alone
    return {"seed": seed, "acc_dense": float(ok_dense.float().mean()), "acc_pruned": float(ok_pruned.float().mean()),
            "acc_pruned_before_recovery": acc_no_recovery, "ok_dense": ok_dense.tolist(),
            "ok_pruned": ok_pruned.tolist(), "timings_ms": t, "batch": len(xt),
            "params_dense": sum(p.numel() for p in dense.parameters()),
            "params_pruned": sum(p.numel() for p in pruned.parameters()),
            "size_mb_dense": file_mb(dense, tmp, f"dense{seed}"), "size_mb_pruned": file_mb(pruned, tmp, f"pruned{seed}"),
            "shapes": report.config["data"]["shapes"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    from nnforge.data import load
    from nnforge.evaluate.stats import paired_bootstrap_diff_ci

    if mode(args) == "smoke":
        torch.set_num_threads(1)  # a tiny CNN: threads only wait on each other on a loaded machine
    data = load("digits")
    seeds = pick(args, full=[0, 1, 2], quick=[0], smoke=[0])
    steps, recovery = pick(args, full=(600, 300), quick=(150, 60), smoke=(6, 3))
    rounds = pick(args, full=60, quick=20, smoke=3)
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_seed(data, s, steps, recovery, rounds, Path(tmp)) for s in seeds]
    pool = {k: [v for r in runs for v in r["timings_ms"][k]] for k in runs[0]["timings_ms"]}
    speedup, speedup_ci = ratio_with_ci(pool["dense"], pool["pruned"])
    speedup_b1, speedup_b1_ci = ratio_with_ci(pool["dense_b1"], pool["pruned_b1"])
    drop = paired_bootstrap_diff_ci([v for r in runs for v in r["ok_dense"]], [v for r in runs for v in r["ok_pruned"]])
    n = len(runs)
    summary = {"acc_dense": sum(r["acc_dense"] for r in runs) / n, "acc_pruned": sum(r["acc_pruned"] for r in runs) / n,
               "acc_drop": drop["diff"], "acc_drop_ci": drop["ci"], "acc_drop_mcnemar_p": drop["mcnemar_p"],
               "speedup": speedup, "speedup_ci": list(speedup_ci),
               "speedup_b1": speedup_b1, "speedup_b1_ci": list(speedup_b1_ci),
               "params_ratio": runs[0]["params_pruned"] / runs[0]["params_dense"],
               "size_ratio": runs[0]["size_mb_pruned"] / runs[0]["size_mb_dense"],
               "dense_ms": spread(pool["dense"])["median"], "pruned_ms": spread(pool["pruned"])["median"],
               "batch": runs[0]["batch"]}
    results = [{k: v for k, v in r.items() if not k.startswith("ok_")} for r in runs]
    for r in results:
        r["timings_ms"] = {k: spread(v) for k, v in r["timings_ms"].items()}
    path = write_results("prune", "digits", args=args, results=results, summary=summary,
                         no_ci={"params_ratio": "a ratio of parameter counts: exact, not sampled",
                                "size_ratio": "a ratio of file sizes in bytes: exact, not sampled"},
                         extra={"setup": {"steps": steps, "recovery_steps": recovery, "lr": LR,
                                          "recovery_lr": RECOVERY_LR, "batch": BATCH, "prune": PRUNE,
                                          "model": "digits-cnn", "seeds": seeds, "runtime": "PyTorch eager, fp32"}})
    print(f"wrote {path}" if path else "")
    for k, v in summary.items():
        print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
