"""Benchmark: optimizers on the char-GPT (nanoGPT CPU config) trained on shakespeare-char.

    python benchmarks/optim/charlm.py            # full: 2,000 steps, every optimizer at >= 3 lrs (1-2 h)
    python benchmarks/optim/charlm.py --quick    # 100 steps, two optimizers, one lr (under a minute)
    python benchmarks/optim/charlm.py --only adamw,muon,batched-muon,normuon
    python benchmarks/optim/charlm.py --only adamw,soap --tag soap   # -> optim_charlm_soap.json

Setup as in the training issue: batch 12, context 64, 4 layers / 4 heads / 128 dims, warm-up 100 +
cosine to 10%, clip 1.0, weight decay 0.1. Every optimizer, AdamW included, gets the same number of
learning rates around its own recommended default; its best is reported. Runs are interleaved
(lr 1 of every optimizer, then lr 2, …) so that machine noise spreads evenly. Val loss is the mean over
200 fixed validation batches every 100 steps; training seconds exclude evaluation.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import spread, write_results  # noqa: E402

# optimizer → (learning rates around its recommended default, fixed options); "ours" marks nnforge's own
GRID: dict[str, tuple[list[float], dict[str, Any], bool]] = {
    # AdamW's best lr sat at the top of 2e-3/4e-3/8e-3 (2e-3 was clearly last), so its grid moved up one octave
    "adamw": ([4e-3, 8e-3, 1.6e-2], {"betas": (0.9, 0.99), "weight_decay": 0.1}, False),
    # both Muon hybrids get the same settings for their AdamW part (embeddings, head, norms)
    "muon": ([5e-3, 1e-2, 2e-2], {"adamw_lr": 6e-3, "weight_decay": 0.1}, False),
    "adafactor": ([5e-3, 1e-2, 2e-2], {"weight_decay": 0.1}, False),
    "batched-muon": ([5e-3, 1e-2, 2e-2], {"adamw_lr": 6e-3, "weight_decay": 0.1}, True),
    "normuon": ([2.5e-3, 5e-3, 1e-2], {"adamw_lr": 6e-3, "weight_decay": 0.1}, True),
    "soap": ([1.5e-3, 3e-3, 6e-3], {"weight_decay": 0.1}, True),
    "schedule-free-adamw": ([1.25e-3, 2.5e-3, 5e-3], {"weight_decay": 0.1}, True),
    "prodigy": ([0.5, 1.0, 2.0], {"weight_decay": 0.1}, True),
    "lion": ([1.5e-4, 3e-4, 6e-4], {"weight_decay": 0.1}, True),
    # once batch_tokens was applied once, Sophia's best sat at the top of 1.5e-4/3e-4/6e-4 (optim_charlm_resweep.json);
    # 6e-4/1.2e-3/2.4e-3 (optim_charlm_sophia.json) ended 1.8148/1.9998/2.5508, so the grid now brackets 6e-4
    "sophia": ([3e-4, 6e-4, 1.2e-3], {"weight_decay": 0.1, "batch_tokens": 12 * 64}, True),
    "adamw-hd": ([2e-3, 4e-3, 8e-3], {"weight_decay": 0.1}, True),
}
TORCH_OWN = {"adamw", "muon", "adafactor"}


def _batches(corpus: Any, n: int, seed: int, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [corpus.batch(split, 12, 64, gen) for _ in range(n)]


def run_one(corpus: Any, name: str, lr: float, options: dict[str, Any], steps: int, eval_every: int,
            val: list[Any]) -> dict[str, Any]:
    """Train one char-GPT from seed 0; returns the val curve, step times and training seconds."""
    from nnforge.models import build
    from nnforge.optim import build_optimizer
    from nnforge.train import TrainConfig, fit

    torch.manual_seed(0)
    model = build("char-gpt")
    optimizer = build_optimizer(name, model, lr=lr, **options)
    callbacks, step_times = timed_callbacks(optimizer)
    config = TrainConfig(max_steps=steps, lr=lr, schedule="cosine", warmup_steps=min(100, steps // 10),
                         min_lr_ratio=0.1, clip_norm=1.0, eval_every=eval_every, log_every=10_000, seed=0)

    def train_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return corpus.batch("train", 12, 64, torch.Generator().manual_seed(1_000_003 + step))

    result = fit(model, train_batch, config=config, optimizer=optimizer, eval_data=val,
                 loss_fn=lambda m, b: m(b[0], b[1])[1], callbacks=callbacks)
    curve = {str(int(e["step"])): float(e["loss"]) for e in result.evals}
    return {"optimizer": name, "lr": lr, "options": options, "val_loss": curve, **timing(step_times, curve)}


def timed_callbacks(optimizer: Any) -> tuple[list[Any], list[float]]:
    """Callbacks that time each training step (evaluation excluded) and refresh Sophia's Hessian."""
    from nnforge.train import Event, hessian_refresh, on

    step_times: list[float] = []
    marks: dict[str, float] = {}
    callbacks: list[Any] = [hessian_refresh(optimizer)] if hasattr(optimizer, "update_hessian") else []
    callbacks += [on(Event.STEP_START, lambda s: marks.__setitem__("t", time.perf_counter())),
                  on(Event.STEP_END, lambda s: step_times.append(time.perf_counter() - marks["t"]))]
    return callbacks, step_times


def timing(step_times: list[float], curve: dict[str, float]) -> dict[str, Any]:
    """Training seconds in total and at each evaluated step, median s/step, and whether the curve is finite."""
    seconds_at, total = {}, 0.0
    for i, t in enumerate(step_times, start=1):
        total += t
        if str(i) in curve:
            seconds_at[str(i)] = total
    finite = all(v == v and abs(v) != float("inf") for v in curve.values())
    return {"train_seconds": total, "seconds_at": seconds_at, "s_per_step": spread(step_times)["median"],
            "finite": finite}


def first_reach(run: dict[str, Any], target: float) -> tuple[int | None, float | None]:
    for step, loss in sorted(run["val_loss"].items(), key=lambda kv: int(kv[0])):
        if loss <= target:
            return int(step), run["seconds_at"][step]
    return None, None


def summarise(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    def final(r: dict[str, Any]) -> float:
        last = max(r["val_loss"], key=int)
        return r["val_loss"][last] if r["finite"] else float("inf")

    best: dict[str, dict[str, Any]] = {}
    for r in runs:
        if r["optimizer"] not in best or final(r) < final(best[r["optimizer"]]):
            best[r["optimizer"]] = r
    target = final(best["adamw"]) if "adamw" in best else min(final(r) for r in runs)
    table = []
    for name, r in best.items():
        steps, seconds = first_reach(r, target)
        table.append({"optimizer": name, "lr": r["lr"], "val_loss": r["val_loss"], "final_val_loss": final(r),
                      "steps_to_adamw_final": steps, "seconds_to_adamw_final": seconds, "s_per_step": r["s_per_step"],
                      "train_seconds": r["train_seconds"], "nnforge_implementation": name not in TORCH_OWN,
                      "lrs_tried": sorted(x["lr"] for x in runs if x["optimizer"] == name),
                      "loses_to_adamw": final(r) > target})
    ours = [t for t in table if t["nnforge_implementation"] and t["steps_to_adamw_final"] is not None]
    winner = min(ours, key=lambda t: (t["seconds_to_adamw_final"], t["steps_to_adamw_final"])) if ours else None
    muon = next((t for t in table if t["optimizer"] == "muon"), None)
    summary = {"adamw_best_lr": best["adamw"]["lr"] if "adamw" in best else None, "adamw_best_final_loss": target,
               "best_optimizer": winner["optimizer"] if winner else None,
               "best_steps_to_adamw_final": winner["steps_to_adamw_final"] if winner else None,
               "best_seconds_to_adamw_final": winner["seconds_to_adamw_final"] if winner else None,
               "torch_muon_seconds_to_adamw_final": muon["seconds_to_adamw_final"] if muon else None,
               "all_finite": all(r["finite"] for r in runs),
               "lose_to_adamw": sorted(t["optimizer"] for t in table if t["loses_to_adamw"])}
    return table, summary


def plot(table: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in sorted(table, key=lambda t: t["final_val_loss"]):
        xs = sorted(int(k) for k in t["val_loss"])
        ax.plot(xs, [t["val_loss"][str(x)] for x in xs], label=f"{t['optimizer']} (lr {t['lr']:g})")
    ax.set_xlabel("step"), ax.set_ylabel("val loss (200 batches)"), ax.set_ylim(top=2.6)
    ax.set_title("char-GPT on shakespeare-char, best lr per optimizer"), ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def _load_progress(path: Path, steps: int, n_val: int) -> dict[str, dict[str, Any]]:
    done: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            doc = json.loads(line)
            if doc["steps"] == steps and doc["val_batches"] == n_val:
                done[f"{doc['run']['optimizer']}@{doc['run']['lr']:g}"] = doc["run"]
    return done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", help="comma-separated optimizer names")
    ap.add_argument("--tag", help="write optim_charlm_<tag>.json (and its plot) instead of optim_charlm.json, "
                                  "for a partial sweep that must not replace the main result")
    args = ap.parse_args()
    if args.tag is not None and not args.tag.replace("-", "").replace("_", "").isalnum():
        ap.error(f"--tag {args.tag!r}: use letters, digits, '-' and '_' only")
    bench = f"charlm_{args.tag}" if args.tag else "charlm"
    unknown = sorted(set(args.only.split(",")) - set(GRID)) if args.only else []
    if unknown:
        ap.error(f"--only: unknown optimizer(s) {', '.join(unknown)}; known: {', '.join(GRID)}")
    from nnforge.data import load

    corpus = load("shakespeare-char")
    names = args.only.split(",") if args.only else (["adamw", "batched-muon"] if args.quick else list(GRID))
    steps, eval_every, n_val = (100, 50, 20) if args.quick else (2000, 100, 200)
    val = _batches(corpus, n_val, 12345, "val")
    n_lrs = 1 if args.quick else min(len(GRID[n][0]) for n in names)
    # finished runs are kept in a progress file, so an interrupted sweep resumes where it stopped
    progress = Path(__file__).resolve().parents[1] / "results" / f".optim_{bench}{'.quick' if args.quick else ''}.progress.jsonl"
    done = _load_progress(progress, steps, n_val)
    runs = []
    for i in range(n_lrs):  # interleaved: lr i of every optimizer, then lr i+1
        for name in names:
            lrs, options, _ = GRID[name]
            lr = lrs[1] if args.quick else lrs[i]
            key = f"{name}@{lr:g}"
            if key in done:
                runs.append(done[key])
                continue
            runs.append(run_one(corpus, name, lr, options, steps, eval_every, val))
            with open(progress, "a", encoding="utf-8") as f:
                f.write(json.dumps({"steps": steps, "val_batches": n_val, "run": runs[-1]}) + "\n")
            r = runs[-1]
            print(f"{name:22s} lr {lr:<8g} final val {r['val_loss'][max(r['val_loss'], key=int)]:.4f} "
                  f"{r['s_per_step'] * 1e3:.1f} ms/step", flush=True)
    table, summary = summarise(runs)
    path = write_results("optim", bench, quick=args.quick, results=table, summary=summary,
                         extra={"runs": runs, "setup": {"steps": steps, "eval_every": eval_every, "val_batches": n_val,
                                                        "batch": 12, "block": 64, "model": "char-gpt 4x4x128"}})
    if not args.quick:
        plot(table, Path(__file__).resolve().parents[2] / "docs" / f"optim_{bench}.png")
    progress.unlink(missing_ok=True)
    print(f"wrote {path}\n{summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
