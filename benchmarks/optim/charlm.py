"""Benchmark: optimizers on the char-GPT (nanoGPT CPU config) trained on shakespeare-char.

    python benchmarks/optim/charlm.py            # full: 2,000 steps, every registered optimizer, lr bracketed (2-3 h)
    python benchmarks/optim/charlm.py --quick    # 100 steps, two optimizers, one lr (under a minute)
    python benchmarks/optim/charlm.py --smoke    # 4 steps, adamw and torch muon, seconds; writes nothing
    python benchmarks/optim/charlm.py --sweep-only   # the lr sweep alone (hours, any load); then run it plain, quietly
    python benchmarks/optim/charlm.py --only adamw,muon   # -> optim_charlm_only-adamw-muon.json, never the main file
    python benchmarks/optim/charlm.py --only adamw,soap --tag soap   # -> optim_charlm_soap.json

Setup as in the training issue: batch 12, context 64, 4 layers / 4 heads / 128 dims, warm-up 100 +
cosine to 10%, clip 1.0, weight decay 0.1. Every registered optimizer, AdamW and torch's Muon included,
starts from three learning rates (a factor of 2 apart) around its best so far; whenever its best sits at
an edge of the lrs tried, one more lr beyond that edge is run, until the best is strictly inside (or
MAX_EXTENSIONS points were added: ``summary.best_lr_inside_grid`` says which). Runs are interleaved
(lr 1 of every optimizer, then lr 2, …, then one extension of each) so that machine noise spreads evenly. Val loss is the mean over
200 fixed validation batches every 100 steps.

Time is measured apart from the sweep: the sweep's runs take hours, so their wall clocks see different machine
loads. After it, a timing phase trains every optimizer at its best lr side by side, 20 steps each per round in a
shuffled order, 15 rounds after a warm-up round (``nnforge.hardware.interleave``), and "seconds to AdamW's final
loss" is the sweep's steps to it x that phase's median ms/step; the winner's ratio to torch Muon carries the
bootstrap interval of the ms/step ratio. The sweep's own step times stay in the file (``sweep_*``) for reference.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, mode, pick, ratio_with_ci, spread, tag, write_results  # noqa: E402
from _sweep import LrSweep, final_loss, next_lr, timed_callbacks, timing  # noqa: E402,F401  (digits.py imports them here)

# optimizer → (starting learning rates, geometric, around its best so far; fixed options); any registered
# optimizer missing here starts at half, once and twice its config's default lr. Each grid is extended
# automatically until its best lr is strictly inside (see sweep), so a starting grid only saves runs.
GRID: dict[str, tuple[list[float], dict[str, Any]]] = {
    "adamw": ([4e-3, 8e-3, 1.6e-2], {"betas": (0.9, 0.99), "weight_decay": 0.1}),
    # both Muon hybrids get the same settings for their AdamW part (embeddings, head, norms); torch Muon's best
    # sat at the bottom of 5e-3/1e-2/2e-2 (1.6229, 1.6268, 1.6451), so its grid starts an octave lower
    "muon": ([2.5e-3, 5e-3, 1e-2], {"adamw_lr": 6e-3, "weight_decay": 0.1}),
    "adafactor": ([1e-2, 2e-2, 4e-2], {"weight_decay": 0.1}),  # best was at the top of 5e-3..2e-2
    "batched-muon": ([5e-3, 1e-2, 2e-2], {"adamw_lr": 6e-3, "weight_decay": 0.1}),
    "normuon": ([2.5e-3, 5e-3, 1e-2], {"adamw_lr": 6e-3, "weight_decay": 0.1}),
    "soap": ([1.5e-3, 3e-3, 6e-3], {"weight_decay": 0.1}),
    "schedule-free-adamw": ([2.5e-3, 5e-3, 1e-2], {"weight_decay": 0.1}),  # best was at the top of 1.25e-3..5e-3
    "prodigy": ([0.25, 0.5, 1.0], {"weight_decay": 0.1}),  # best was at the bottom of 0.5..2
    "lion": ([3e-4, 6e-4, 1.2e-3], {"weight_decay": 0.1}),  # best was at the top of 1.5e-4..6e-4
    # once batch_tokens was applied once, Sophia's best sat at the top of 1.5e-4/3e-4/6e-4 (optim_charlm_resweep.json);
    # 6e-4/1.2e-3/2.4e-3 (optim_charlm_sophia.json) ended 1.8148/1.9998/2.5508, so the grid now brackets 6e-4
    "sophia": ([3e-4, 6e-4, 1.2e-3], {"weight_decay": 0.1, "batch_tokens": 12 * 64}),
    "adamw-hd": ([4e-3, 8e-3, 1.6e-2], {"weight_decay": 0.1}),  # best was at the top of 2e-3..8e-3
}
TIMING = (15, 20)  # timing phase: rounds, training steps per optimizer per round (full mode)
MAX_EXTENSIONS = 4  # points added beyond an edge per optimizer before giving up (reported as not bracketed)
TORCH_OWN = {"adamw", "muon", "adafactor"}


def _batches(corpus: Any, n: int, seed: int, split: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [corpus.batch(split, 12, 64, gen) for _ in range(n)]


def run_one(corpus: Any, name: str, lr: float, options: dict[str, Any], steps: int, eval_every: int,
            val: list[Any], model: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train one char-GPT from seed 0; returns the val curve, step times and training seconds."""
    from nnforge.models import build
    from nnforge.optim import build_optimizer
    from nnforge.train import TrainConfig, fit

    torch.manual_seed(0)
    net = build("char-gpt", **(model or {}))
    optimizer = build_optimizer(name, net, lr=lr, **options)
    callbacks, step_times = timed_callbacks(optimizer)
    config = TrainConfig(max_steps=steps, lr=lr, schedule="cosine", warmup_steps=min(100, steps // 10),
                         min_lr_ratio=0.1, clip_norm=1.0, eval_every=eval_every, log_every=10_000, seed=0)

    def train_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return corpus.batch("train", 12, 64, torch.Generator().manual_seed(1_000_003 + step))

    result = fit(net, train_batch, config=config, optimizer=optimizer, eval_data=val,
                 loss_fn=lambda m, b: m(b[0], b[1])[1], callbacks=callbacks)
    # a diverged run's NaN/inf losses are null (JSON has no NaN); such a run is not finite
    curve = {str(int(e["step"])): (float(e["loss"]) if math.isfinite(float(e["loss"])) else None) for e in result.evals}
    return {"optimizer": name, "lr": lr, "options": options, "val_loss": curve, **timing(step_times, curve)}


def timing_phase(corpus: Any, best: dict[str, dict[str, Any]], model: dict[str, Any], rounds: int,
                 steps: int) -> dict[str, list[float]]:
    """Seconds per training step of each optimizer at its best lr, measured side by side: ms per step, per round.

    One char-GPT and optimizer per optimizer is kept alive; each round trains every one of them ``steps`` more
    steps through ``fit`` (Sophia with its Hessian refresh, as in the sweep), in a fresh shuffled order
    (``nnforge.hardware.interleave``), after one untimed warm-up round. Machine noise so reaches every optimizer
    alike, which the sweep's long runs, hours apart, cannot promise.
    """
    from nnforge.hardware import interleave
    from nnforge.models import build
    from nnforge.optim import build_optimizer
    from nnforge.train import TrainConfig, fit, hessian_refresh

    def trainer(name: str, run: dict[str, Any]) -> Any:
        torch.manual_seed(0)
        net = build("char-gpt", **model)
        optimizer = build_optimizer(name, net, lr=run["lr"], **grid_for(name)[1])
        callbacks = [hessian_refresh(optimizer)] if hasattr(optimizer, "update_hessian") else []
        config = TrainConfig(max_steps=steps, lr=run["lr"], schedule="constant", clip_norm=1.0, log_every=10_000,
                             seed=0)
        gen = torch.Generator().manual_seed(7)

        def train(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            return corpus.batch("train", 12, 64, gen)

        return lambda: fit(net, train, config=config, optimizer=optimizer,
                           loss_fn=lambda m, b: m(b[0], b[1])[1], callbacks=callbacks)

    fns = {name: trainer(name, run) for name, run in best.items()}
    ms = interleave(fns, rounds=rounds, warmup=1, inference_mode=False)
    return {name: [t / steps for t in samples] for name, samples in ms.items()}


def first_reach(run: dict[str, Any], target: float) -> tuple[int | None, float | None]:
    for step, loss in sorted(run["val_loss"].items(), key=lambda kv: int(kv[0])):
        if loss is not None and loss <= target:
            return int(step), run["seconds_at"][step]
    return None, None


def best_runs(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each optimizer's run with the lowest final val loss."""
    best: dict[str, dict[str, Any]] = {}
    for r in runs:
        if r["optimizer"] not in best or final_loss(r) < final_loss(best[r["optimizer"]]):
            best[r["optimizer"]] = r
    return best


def summarise(runs: list[dict[str, Any]],
              step_ms: dict[str, list[float]] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per optimizer: steps to AdamW's final loss (from the sweep) and seconds to it = those steps x the median
    ms/step of the interleaved timing phase; the winner's seconds over torch Muon's with a bootstrap interval.
    Without ``step_ms`` (optim/digits.py, no timing phase) the seconds are the sweep's own clocks."""
    final = final_loss
    best = best_runs(runs)
    target = final(best["adamw"]) if "adamw" in best else min(final(r) for r in runs)
    table = []
    for name, r in best.items():
        steps, sweep_seconds = first_reach(r, target)
        ms = spread(step_ms[name])["median"] if step_ms else r["s_per_step"] * 1e3
        seconds = (steps * ms / 1e3 if step_ms else sweep_seconds) if steps is not None else None
        lrs = sorted(x["lr"] for x in runs if x["optimizer"] == name)
        table.append({"optimizer": name, "lr": r["lr"], "val_loss": r["val_loss"],
                      "final_val_loss": final(r) if math.isfinite(final(r)) else None,
                      "steps_to_adamw_final": steps, "seconds_to_adamw_final": seconds, "ms_per_step": ms,
                      "ms_per_step_samples": step_ms[name] if step_ms else None, "sweep_seconds_to_adamw_final": sweep_seconds,
                      "sweep_s_per_step": r["s_per_step"],
                      "train_seconds": r["train_seconds"], "nnforge_implementation": name not in TORCH_OWN,
                      "lrs_tried": lrs, "best_lr_inside_grid": lrs[0] < r["lr"] < lrs[-1],
                      "loses_to_adamw": final(r) > target})
    ours = [t for t in table if t["nnforge_implementation"] and t["steps_to_adamw_final"] is not None]
    winner = min(ours, key=lambda t: (t["seconds_to_adamw_final"], t["steps_to_adamw_final"])) if ours else None
    muon = next((t for t in table if t["optimizer"] == "muon"), None)
    summary = {"adamw_best_lr": best["adamw"]["lr"] if "adamw" in best else None,
               "adamw_best_final_loss": target if math.isfinite(target) else None,
               "best_optimizer": winner["optimizer"] if winner else None,
               "best_steps_to_adamw_final": winner["steps_to_adamw_final"] if winner else None,
               "best_seconds_to_adamw_final": winner["seconds_to_adamw_final"] if winner else None,
               "torch_muon_seconds_to_adamw_final": muon["seconds_to_adamw_final"] if muon else None,
               **_vs_muon(winner, muon, step_ms),
               "all_finite": all(r["finite"] for r in runs),
               "lose_to_adamw": sorted(t["optimizer"] for t in table if t["loses_to_adamw"]),
               # the best lr strictly inside the lrs tried: the sweep found each optimizer's optimum, not an edge
               "best_lr": {t["optimizer"]: t["lr"] for t in table},
               "best_lr_inside_grid": {t["optimizer"]: t["best_lr_inside_grid"] for t in table},
               "final_val_loss": {t["optimizer"]: t["final_val_loss"] for t in table}}
    return table, summary


def _vs_muon(winner: dict[str, Any] | None, muon: dict[str, Any] | None,
             step_ms: dict[str, list[float]] | None) -> dict[str, Any]:
    """The winner's seconds to AdamW's final loss over torch Muon's, with the interval of the ms/step ratio."""
    if not winner or not muon or muon["steps_to_adamw_final"] is None or not step_ms:
        return {"best_over_torch_muon_seconds": None, "best_over_torch_muon_seconds_ci": None}
    steps = winner["steps_to_adamw_final"] / muon["steps_to_adamw_final"]
    ratio, (lo, hi) = ratio_with_ci(step_ms[winner["optimizer"]], step_ms["muon"])
    return {"best_over_torch_muon_seconds": steps * ratio, "best_over_torch_muon_seconds_ci": [steps * lo, steps * hi]}


def plot(table: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for t in sorted(table, key=lambda t: math.inf if t["final_val_loss"] is None else t["final_val_loss"]):
        xs = sorted(int(k) for k in t["val_loss"])
        ax.plot(xs, [t["val_loss"][str(x)] for x in xs], label=f"{t['optimizer']} (lr {t['lr']:g})")
    ax.set_xlabel("step"), ax.set_ylabel("val loss (200 batches)"), ax.set_ylim(top=2.6)
    ax.set_title("char-GPT on shakespeare-char, best lr per optimizer"), ax.legend(fontsize=7)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def grid_for(name: str) -> tuple[list[float], dict[str, Any]]:
    """The starting grid and options of a registered optimizer (its config's default lr x 1/2, 1, 2 if not in GRID)."""
    if name in GRID:
        return GRID[name]
    from nnforge.optim._registry import OPTIMIZERS

    lr = float(OPTIMIZERS.get(name, where="optimizer").config.model_fields["lr"].default)
    return [lr / 2, lr, 2 * lr], {}


def main() -> int:
    from nnforge.optim import optimizer_names

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap, only="optimizers, comma-separated")
    ap.add_argument("--sweep-only", action="store_true",
                    help="run (or finish) the lr sweep into the progress file and stop before the timing phase; run "
                         "again without it, on a quiet machine, to time and write the results")
    args = ap.parse_args()
    unknown = sorted(set(args.only or ()) - set(optimizer_names()))
    if unknown:
        ap.error(f"--only: unknown optimizer(s) {', '.join(unknown)}; registered: {', '.join(optimizer_names())}")
    from nnforge.data import load

    corpus = load("shakespeare-char")
    run_mode, suffix = mode(args), f"_{tag(args)}" if tag(args) else ""
    names = args.only or pick(args, full=optimizer_names(), quick=["adamw", "batched-muon"], smoke=["adamw", "muon"])
    steps, eval_every, n_val = pick(args, full=(2000, 100, 200), quick=(100, 50, 20), smoke=(4, 2, 2))
    val = _batches(corpus, n_val, 12345, "val")
    # finished runs are kept in a progress file, so an interrupted sweep resumes where it stopped
    progress = None if run_mode == "smoke" else (
        Path(__file__).resolve().parents[1] / "results" / f".optim_charlm{suffix}.{run_mode}.progress.jsonl")
    # smoke: a 1-layer, 32-wide char-GPT on one thread (it checks the code, not the optimizers; one thread so that
    # a loaded machine cannot stall OpenMP barriers)
    model = pick(args, full={}, quick={}, smoke={"n_layer": 1, "n_head": 2, "n_embd": 32})
    if run_mode == "smoke":
        torch.set_num_threads(1)
    sweep = LrSweep(lambda name, lr: run_one(corpus, name, lr, grid_for(name)[1], steps, eval_every, val, model),
                    progress, {"steps": steps, "val_batches": n_val}, key="optimizer")
    grids = {n: grid_for(n)[0] for n in names}
    if run_mode == "quick":  # one lr each: a check that the loop runs, not a sweep (nothing is bracketed)
        grids = {n: [g[1]] for n, g in grids.items()}
    sweep.grid(grids)
    sweep.bracket(names, pick(args, full=MAX_EXTENSIONS, quick=0, smoke=1))
    runs = [r for n in names for r in sweep.runs[n]]
    if args.sweep_only:
        print(f"sweep done: {len(runs)} runs in {progress}; run again without --sweep-only to time and write", flush=True)
        return 0
    rounds, per_round = pick(args, full=TIMING, quick=(3, 5), smoke=(2, 2))
    step_ms = timing_phase(corpus, best_runs(runs), model, rounds, per_round)
    table, summary = summarise(runs, step_ms)
    path = write_results("optim", "charlm", args=args, results=table, summary=summary,
                         peers={n: {"lrs_tried": sorted(r["lr"] for r in sweep.runs[n]), "options": grid_for(n)[1],
                                    "implementation": "torch" if n in TORCH_OWN else "nnforge"} for n in names},
                         extra={"runs": runs, "setup": {"steps": steps, "eval_every": eval_every, "val_batches": n_val,
                                                        "batch": 12, "block": 64, "model": "char-gpt 4x4x128",
                                                        "model_options": model,
                                                        "max_extensions": MAX_EXTENSIONS,
                                                        "sweep_runs_resumed": sweep.resumed,
                                                        "timing_rounds": rounds, "timing_steps_per_round": per_round}})
    if run_mode == "full":
        plot(table, Path(__file__).resolve().parents[2] / "docs" / f"optim_charlm{suffix}.png")
    if progress is not None:
        progress.unlink(missing_ok=True)
    print(f"wrote {path}\n{summary}" if path else summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
