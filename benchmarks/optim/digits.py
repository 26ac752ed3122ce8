"""Benchmark: optimizers on the digits CNN (scikit-learn 8x8 digits, stratified 80/20, seed 0).

    python benchmarks/optim/digits.py           # full: 600 steps, every optimizer at >= 3 lrs (minutes)
    python benchmarks/optim/digits.py --quick   # 100 steps, two optimizers, one lr
    python benchmarks/optim/digits.py --smoke   # 6 steps, two optimizers, one lr, one thread; writes nothing
    python benchmarks/optim/digits.py --only adamw,soap   # a partial sweep: writes optim_digits_only-adamw-soap.json

Same protocol as charlm.py: each optimizer gets the same number of learning rates around its default,
runs interleaved, test loss every 50 steps, training seconds without evaluation; whenever an optimizer's best
lr sits at an edge of those tried, one more lr beyond that edge is run, round after round (interleaved), until
the best is strictly inside or MAX_EXTENSIONS points were added (``summary.best_lr_inside_grid`` says which);
the summary says which reach the best AdamW's final test loss, in how many steps and seconds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from charlm import MAX_EXTENSIONS, grid_for, next_lr, summarise, timed_callbacks, timing  # noqa: E402

from _common import add_mode_args, mode, pick, write_results  # noqa: E402

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
    from nnforge.optim import optimizer_names

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap, only="optimizers, comma-separated")
    args = ap.parse_args()
    unknown = sorted(set(args.only or ()) - set(optimizer_names()))
    if unknown:
        ap.error(f"--only: unknown optimizer(s) {', '.join(unknown)}; registered: {', '.join(optimizer_names())}")
    from nnforge.data import load

    if mode(args) == "smoke":
        torch.set_num_threads(1)  # a tiny CNN: threads only wait on each other on a loaded machine
    data = load("digits")
    names = args.only or pick(args, full=optimizer_names(), quick=["adamw", "batched-muon"], smoke=["adamw", "muon"])
    steps, eval_every = pick(args, full=(600, 50), quick=(100, 50), smoke=(6, 3))
    grids = {n: grid_for(n) for n in names}
    one_lr = mode(args) != "full"
    n_lrs = 1 if one_lr else min(len(grids[n][0]) for n in names)
    runs = []
    for i in range(n_lrs):  # interleaved: lr i of every optimizer, then lr i+1
        for name in names:
            lrs, options = grids[name]
            runs.append(run_one(data, name, lrs[len(lrs) // 2] if one_lr else lrs[i], options, steps, eval_every))
    for _ in range(0 if one_lr else MAX_EXTENSIONS):  # bracket each best lr, one new point per optimizer per round
        todo = {n: lr for n in names if (lr := next_lr([r for r in runs if r["optimizer"] == n])) is not None}
        if not todo:
            break
        for name, lr in todo.items():
            runs.append(run_one(data, name, lr, grids[name][1], steps, eval_every))
    table, summary = summarise(runs)
    for row in table:
        run = next(r for r in runs if r["optimizer"] == row["optimizer"] and r["lr"] == row["lr"])
        row["final_test_accuracy"] = run["test_accuracy"][max(run["test_accuracy"], key=int)]
    summary["adamw_best_final_test_loss"] = summary.pop("adamw_best_final_loss")
    path = write_results("optim", "digits", args=args, results=table, summary=summary,
                         peers={n: {"lrs_tried": sorted(r["lr"] for r in runs if r["optimizer"] == n),
                                    "options": grids[n][1]} for n in names},
                         extra={"runs": runs, "setup": {"steps": steps, "batch": BATCH, "model": "digits-cnn",
                                                        "max_extensions": MAX_EXTENSIONS}})
    print(f"wrote {path}\n{summary}" if path else summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
