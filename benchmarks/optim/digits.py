"""Benchmark: optimizers on the digits CNN (scikit-learn 8x8 digits, stratified 80/20, seed 0).

    python benchmarks/optim/digits.py           # full: 600 steps, every optimizer at >= 3 lrs (minutes)
    python benchmarks/optim/digits.py --quick   # 100 steps, two optimizers, one lr

Same protocol as charlm.py: each optimizer gets the same number of learning rates around its default,
runs interleaved, test loss every 50 steps, training seconds without evaluation; the summary says which
reach the best AdamW's final test loss, in how many steps and seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from charlm import GRID, summarise, timed_callbacks, timing  # noqa: E402

from _common import write_results  # noqa: E402

BATCH = 64


def run_one(data: Any, name: str, lr: float, options: dict[str, Any], steps: int, eval_every: int) -> dict[str, Any]:
    from nnforge.models import build
    from nnforge.optim import build_optimizer
    from nnforge.train import TensorBatches, TrainConfig, accuracy, fit

    x, y = (torch.from_numpy(a) for a in data.splits["train"])
    xt, yt = (torch.from_numpy(a) for a in data.splits["test"])
    torch.manual_seed(0)
    model = build("digits-cnn")
    optimizer = build_optimizer(name, model, lr=lr, **options)
    callbacks, times = timed_callbacks(optimizer)
    config = TrainConfig(max_steps=steps, lr=lr, schedule="cosine", warmup_steps=steps // 20, clip_norm=1.0,
                         eval_every=eval_every, log_every=10_000, seed=0)
    result = fit(model, TensorBatches(x, y, batch_size=BATCH, seed=0), config=config, optimizer=optimizer,
                 eval_data=TensorBatches(xt, yt, batch_size=512, shuffle=False), metric_fn=accuracy,
                 callbacks=callbacks)
    curve = {str(int(e["step"])): float(e["loss"]) for e in result.evals}
    acc = {str(int(e["step"])): float(e["accuracy"]) for e in result.evals}
    return {"optimizer": name, "lr": lr, "options": options, "val_loss": curve, "test_accuracy": acc,
            **timing(times, curve)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma-separated optimizer names")
    args = ap.parse_args()
    from nnforge.data import load

    data = load("digits")
    names = args.only.split(",") if args.only else (["adamw", "batched-muon"] if args.quick else list(GRID))
    steps, eval_every = (100, 50) if args.quick else (600, 50)
    n_lrs = 1 if args.quick else min(len(GRID[n][0]) for n in names)
    runs = []
    for i in range(n_lrs):
        for name in names:
            lrs, options, _ = GRID[name]
            runs.append(run_one(data, name, lrs[1] if args.quick else lrs[i], options, steps, eval_every))
    table, summary = summarise(runs)
    for row in table:
        run = next(r for r in runs if r["optimizer"] == row["optimizer"] and r["lr"] == row["lr"])
        row["final_test_accuracy"] = run["test_accuracy"][max(run["test_accuracy"], key=int)]
    summary["adamw_best_final_test_loss"] = summary.pop("adamw_best_final_loss")
    path = write_results("optim", "digits", quick=args.quick, results=table, summary=summary,
                         extra={"runs": runs, "setup": {"steps": steps, "batch": BATCH, "model": "digits-cnn"}})
    print(f"wrote {path}\n{summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
