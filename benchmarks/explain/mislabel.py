"""Benchmark: finding flipped labels in digits by self-influence (TracIn, TRAK) against the loss-based ranking.

    python benchmarks/explain/mislabel.py           # full: 3 seeds, the digits recipe (300 steps), 5 checkpoints
    python benchmarks/explain/mislabel.py --quick   # 1 seed, 150 steps, 3 checkpoints
    python benchmarks/explain/mislabel.py --smoke   # 200 examples, 20 steps, 2 checkpoints; writes nothing

Per seed: 10% of the digits training labels are flipped to another class (seeded), and the digits CNN is trained
on them with the built-in digits recipe (AdamW 3e-3, weight decay 0.01, batch 64, 300 steps, warm-up + cosine),
keeping a checkpoint every 60 steps (5 in all, every one kept). Each method ranks the training examples, most suspicious first:

- ``loss``: the cross-entropy of the final trained model on the (noisy) label, the baseline of Pruthi et al.;
- ``tracin``: TracInCP self-influence ``Σ_i η_i ‖∇ℓ(w_i, z)‖²`` over the checkpoints with the lr each recorded
  (Pruthi et al. 2020; exact gradients of every parameter);
- ``trak``: TRAK self-influence (leverage × (1 − p)) over the same checkpoints, library defaults
  (2048-dimensional Rademacher projection, damping 0.01).

The figure is the AUROC of each ranking at finding the flipped labels, averaged over seeds, with a 95% percentile
bootstrap interval over training examples (resampled within each seed, the same resample for every method, so
the gains over the loss ranking are paired).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _digits import RECIPE, bootstrap_draws, digits, flip_labels, interval, percentile_ci, train  # noqa: E402

from _common import add_mode_args, pick, spread, write_results  # noqa: E402

ARCH = "digits-cnn"
FLIP_FRACTION = 0.1
METHODS = ("loss", "tracin", "trak")
N_BOOT = 1000


def _auroc(scores: np.ndarray, flipped: np.ndarray) -> float:
    """P(a flipped example outranks a clean one), ties counted one half (Mann–Whitney); NaN without both kinds."""
    from scipy.stats import rankdata

    pos = int(flipped.sum())
    if pos in (0, len(scores)):
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[flipped].sum() - pos * (pos + 1) / 2) / (pos * (len(scores) - pos)))


def run_seed(seed: int, limit: int | None, steps: int, every: int) -> tuple[dict[str, Any], np.ndarray]:
    """One seed's row of results, and its bootstrap draws of the AUROCs (N_BOOT, len(METHODS))."""
    from nnforge.explain import auroc
    from nnforge.explain.data import DataAttributionConfig, checkpoints_from_run, self_influence

    x, y, _, _ = digits(limit)
    noisy, flipped = flip_labels(y, FLIP_FRACTION, seed)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        model = train(ARCH, x, noisy, seed=seed, steps=steps, checkpoint_dir=folder, checkpoint_every=every,
                      keep=steps // every)
        train_s = time.perf_counter() - start
        with torch.no_grad():
            logits = model(x)
        ranking = {"loss": torch.nn.functional.cross_entropy(logits, noisy, reduction="none").numpy()}
        seconds = {"loss": 0.0}
        checkpoints = checkpoints_from_run(model, folder)
        for method in ("tracin", "trak"):
            start = time.perf_counter()
            config = DataAttributionConfig(method=method, batch_size=256)  # batch_size: memory only
            ranking[method] = self_influence(checkpoints, (x, noisy), config).numpy()
            seconds[method] = time.perf_counter() - start
    k = int(flipped.sum())
    fits = (logits.argmax(1) == noisy).numpy()
    row: dict[str, Any] = {
        "seed": seed, "examples": len(y), "flipped": k, "train_s": round(train_s, 2),
        "checkpoints": [{"step": c.step, "lr": c.learning_rate} for c in checkpoints],
        "train_accuracy_on_noisy_labels": float(fits.mean()),
        "flipped_labels_fitted_fraction": float(fits[flipped].mean()),
    }
    for method, scores in ranking.items():
        row[f"{method}_auroc"] = auroc(scores[~flipped], scores[flipped])
        row[f"{method}_top_k_precision"] = float(flipped[np.argsort(-scores)[:k]].mean())  # k = number flipped
        row[f"{method}_s"] = round(seconds[method], 2)
    draws = bootstrap_draws(lambda i: [_auroc(ranking[m][i], flipped[i]) for m in METHODS], len(y),
                            n_boot=N_BOOT, seed=seed)
    return row, draws


def summarise(rows: list[dict[str, Any]], draws: list[np.ndarray]) -> dict[str, Any]:
    """Seed-averaged AUROCs with bootstrap intervals, and the paired gains over the loss ranking."""
    mean_draws = np.nanmean(np.stack(draws), axis=0)  # (N_BOOT, METHODS): draw b averaged over the seeds
    summary: dict[str, Any] = {}
    for j, method in enumerate(METHODS):
        value = float(np.mean([r[f"{method}_auroc"] for r in rows]))
        summary[f"{method}_auroc"] = value
        summary[f"{method}_auroc_ci"] = interval(value, percentile_ci(mean_draws[:, j]))
    for j, method in enumerate(METHODS[1:], start=1):
        gain = summary[f"{method}_auroc"] - summary["loss_auroc"]
        summary[f"{method}_vs_loss_auroc_gain"] = gain
        summary[f"{method}_vs_loss_auroc_gain_ci"] = interval(gain, percentile_ci(mean_draws[:, j] - mean_draws[:, 0]))
        summary[f"{method}_reaches_figure"] = bool(summary[f"{method}_auroc"] >= 0.90 and gain > 0)
    summary["seeds"] = len(rows)
    return summary


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    torch.set_num_threads(1)  # a small CNN on a shared 2-core machine: threads only wait on each other
    seeds = pick(args, full=[0, 1, 2], quick=[0], smoke=[0])
    limit, steps, every = pick(args, full=(None, 300, 60), quick=(None, 150, 50), smoke=(200, 20, 10))
    start = time.perf_counter()
    rows, draws = zip(*(run_seed(s, limit, steps, every) for s in seeds), strict=True)
    summary = summarise(list(rows), list(draws))
    summary["seconds"] = round(time.perf_counter() - start, 1)
    results = {"per_seed": list(rows),
               "auroc_spread": {m: spread([r[f"{m}_auroc"] for r in rows]) for m in METHODS}}
    peers = {
        "loss": {"ranking": "cross-entropy of the final model on the noisy label (Pruthi et al. 2020's baseline)"},
        "tracin": {"ranking": "TracInCP self-influence, sum over checkpoints of lr * |grad loss|^2",
                   "gradients": "exact, every parameter", "checkpoints": f"every {every} steps, all kept"},
        "trak": {"ranking": "TRAK self-influence: leverage in the projected margin-gradient kernel * (1 - p)",
                 "config": "DataAttributionConfig(method='trak') defaults: proj_dim 2048 (rademacher), damping 0.01",
                 "models": "the same checkpoints as tracin"},
    }
    path = write_results("explain", "mislabel", args=args, results=results, summary=summary, peers=peers,
                         packages=("scikit-learn", "scipy"),
                         extra={"setup": {"model": ARCH, "recipe": {**RECIPE, "max_steps": steps},
                                          "flip_fraction": FLIP_FRACTION, "seeds": list(seeds),
                                          "train_examples": rows[0]["examples"], "bootstrap_resamples": N_BOOT,
                                          "threads": 1}})
    print(f"wrote {path}\n{summary}" if path else summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
