"""Benchmark: dense char-GPT vs MoE-GPT at equal active parameters, and upcycling, on shakespeare-char.

    python benchmarks/moe/charlm.py               # full: 2,000 steps, lr bracketed for each, upcycling (about 1 h)
    python benchmarks/moe/charlm.py --sweep-only  # the training runs alone (any load); then run plain, quietly
    python benchmarks/moe/charlm.py --quick       # 200 steps, one lr each, 100 continued steps
    python benchmarks/moe/charlm.py --smoke       # a tiny model for a few steps; writes nothing

Setup (issue 22; the training of ``optim/charlm.py``): batch 12, context 64, the CPU char-GPT (4 layers, 4 heads,
128 dims, MLP 512 wide), AdamW (betas 0.9/0.99, weight decay 0.1), warm-up 100 + cosine to 10%, clip 1.0,
2,000 steps, val loss over 200 fixed batches every 100 steps, the same training batches for every run.

* ``dense`` — the char-GPT.
* ``moe`` — ``moe-gpt``: every block's MLP an MoE of 8 experts 256 wide with top-2 softmax routing, so each token
  runs 2 x 256 = 512 hidden units, as the dense MLP (equal active parameters; the routers add 4 x 128 x 8 weights).
  Balanced by DeepSeek-V3's auxiliary-loss-free bias updates (``balance: aux-free``, the default rate) plus the
  router z-loss: every MoE figure comes from this run.

Each variant's lr starts at 4e-3 / 8e-3 / 1.6e-2 and is extended beyond an edge until its best is strictly inside.
Load balance at the end: the best MoE run's per-layer expert load, max / mean, over 50 training batches after its
last step (the distribution the balancing acts on; ``summary.max_mean_load_aux_free`` is the worst layer) and, for
reference, over the 200 validation batches (later plays than most training text: ``..._val``).

Upcycling: the best dense model after its 2,000 steps is (a) trained 500 more steps as it is, (b) upcycled
(``upcycle_``, ``init: copy`` with 1% noise: 8 copies of its MLP, top-2, aux-free) and trained 500 more steps —
the same 500 batches, fresh AdamW, warm-up 50 + cosine to 10%, each at its best of three lrs (0.1 / 0.3 / 1 x the
dense best, bracketed). The upcycled model runs two MLP copies per token, twice the dense MLP's compute.

Speed: after the runs, dense and MoE (and the upcycled model) train 20 steps each per round, 15 rounds in shuffled
order (``nnforge.hardware.interleave``); ``tokens_per_s_ratio`` is MoE over dense with a bootstrap interval.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, mode, pick, ratio_with_ci, spread, write_results  # noqa: E402
from _sweep import LrSweep, best_lr_inside, final_loss, timed_callbacks, timing  # noqa: E402

BATCH, BLOCK = 12, 64
LRS = [4e-3, 8e-3, 1.6e-2]
CONTINUE_FACTORS = [0.1, 0.3, 1.0]
MAX_EXTENSIONS = 3
ADAMW = {"betas": (0.9, 0.99), "weight_decay": 0.1}


def moe_options(tiny: bool) -> dict[str, Any]:
    """moe-gpt's options: 8 experts of half the dense MLP's width, top-2, aux-free balancing."""
    hidden = 32 if tiny else 256
    return {"moe": {"num_experts": 8, "hidden": hidden, "router": "top-k", "router_options": {"k": 2},
                    "balance": "aux-free"}}


def build_variant(variant: str, model: dict[str, Any]) -> torch.nn.Module:
    import nnforge.moe  # noqa: F401  (registers moe-gpt; a resumed run may reach this before anything else imports it)
    from nnforge.models import build

    torch.manual_seed(0)
    if variant == "dense":
        return build("char-gpt", **model)
    return build("moe-gpt", **model, **moe_options(tiny=bool(model)))


def lm_loss(m: torch.nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Training: the LM loss plus every MoE layer's balancing losses (an upcycled char-GPT's too, through
    ``add_balancing_loss``). Evaluation: the cross-entropy alone (``moe-gpt`` adds nothing in evaluation mode), so
    that dense and MoE val losses compare the same quantity."""
    from nnforge.moe import add_balancing_loss

    return add_balancing_loss(m, lambda: m(b[0], b[1])[1])


def train(net: torch.nn.Module, corpus: Any, lr: float, steps: int, eval_every: int, val: list[Any],
          first_step: int, warmup: int) -> dict[str, Any]:
    """Train ``net`` in place with AdamW; the val curve and step times (batches ``first_step`` … on)."""
    from nnforge.optim import build_optimizer
    from nnforge.train import TrainConfig, fit

    optimizer = build_optimizer("adamw", net, lr=lr, **ADAMW)
    callbacks, step_times = timed_callbacks(optimizer)
    config = TrainConfig(max_steps=steps, lr=lr, schedule="cosine", warmup_steps=warmup, min_lr_ratio=0.1,
                         clip_norm=1.0, eval_every=eval_every, log_every=10_000, seed=0)

    def train_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return corpus.batch("train", BATCH, BLOCK, torch.Generator().manual_seed(1_000_003 + first_step + step))

    result = fit(net, train_batch, config=config, optimizer=optimizer, eval_data=val,
                 loss_fn=lm_loss, callbacks=callbacks)
    curve = {str(int(e["step"])): (float(e["loss"]) if math.isfinite(float(e["loss"])) else None)
             for e in result.evals}
    return {"lr": lr, "val_loss": curve, **timing(step_times, curve)}


def load_balance(net: torch.nn.Module, val: list[Any]) -> dict[str, Any]:
    """Per MoE layer: each expert's share of the assignments over the validation batches, and max / mean."""
    from nnforge.moe.diagnostics import routing_by_slice

    loads = routing_by_slice(net, {"val": val}, forward=lambda m, b: m(b[0])).load["val"]
    return {layer: {"load": load, "max_over_mean": max(load) * len(load)} for layer, load in loads.items()}


class Checkpoints:
    """The dense runs' final weights (safetensors beside the progress file), for the upcycling phase."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self.memory: dict[str, dict[str, torch.Tensor]] = {}

    def put(self, lr: float, net: torch.nn.Module) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
        self.memory[f"{lr:g}"] = state
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".dense_{lr:g}.tmp"
            save_file(state, str(tmp))
            tmp.replace(self.folder / f"dense_{lr:g}.safetensors")

    def get(self, lr: float) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        if f"{lr:g}" in self.memory:
            return self.memory[f"{lr:g}"]
        if self.folder is None or not (self.folder / f"dense_{lr:g}.safetensors").exists():
            raise FileNotFoundError(f"no dense checkpoint for lr {lr:g} in {self.folder}: delete the progress file "
                                    "and run again")
        return load_file(str(self.folder / f"dense_{lr:g}.safetensors"))


def upcycled_from(state: dict[str, torch.Tensor], model: dict[str, Any]) -> torch.nn.Module:
    """The dense char-GPT with ``state``, its MLPs upcycled to 8 copies with 1% noise, top-2, aux-free."""
    from nnforge.moe import MoEConfig, UpcycleConfig, upcycle_

    net = build_variant("dense", model)
    net.load_state_dict(state)
    upcycle_(net, UpcycleConfig(moe=MoEConfig(num_experts=8, router_options={"k": 2}, balance="aux-free"),
                                init="copy", noise=0.01, seed=0))
    return net


def speed(corpus: Any, nets: dict[str, Callable[[], torch.nn.Module]], lrs: dict[str, float], rounds: int,
          steps: int) -> dict[str, list[float]]:
    """Milliseconds per ``steps`` training steps, each variant once per round in shuffled order (interleaved)."""
    from nnforge.hardware import interleave
    from nnforge.optim import build_optimizer
    from nnforge.train import TrainConfig, fit

    def trainer(name: str) -> Callable[[], object]:
        net = nets[name]()
        optimizer = build_optimizer("adamw", net, lr=lrs[name], **ADAMW)
        config = TrainConfig(max_steps=steps, lr=lrs[name], schedule="constant", clip_norm=1.0, log_every=10_000,
                             seed=0)
        gen = torch.Generator().manual_seed(7)

        def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
            return corpus.batch("train", BATCH, BLOCK, gen)

        return lambda: fit(net, batch, config=config, optimizer=optimizer, loss_fn=lm_loss)

    return interleave({name: trainer(name) for name in nets}, rounds=rounds, warmup=1, inference_mode=False)


def plot(runs: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for name, ax in (("dense", a), ("moe", a), ("dense-continued", b), ("upcycled", b)):
        r = runs[name]
        xs = sorted(int(k) for k in r["val_loss"])
        ax.plot(xs, [r["val_loss"][str(x)] for x in xs], label=f"{name} (lr {r['lr']:g})")
    a.set_title("2,000 steps, equal active parameters"), a.set_ylim(top=2.6)
    b.set_title("500 more steps from the dense checkpoint")
    for ax in (a, b):
        ax.set_xlabel("step"), ax.set_ylabel("val loss (200 batches)"), ax.legend(fontsize=8)
    fig.savefig(path, dpi=110, bbox_inches="tight")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    ap.add_argument("--sweep-only", action="store_true",
                    help="run (or finish) the training runs into the progress file and stop before the speed phase")
    args = ap.parse_args()
    from nnforge.data import load

    corpus = load("shakespeare-char")
    run_mode = mode(args)
    steps, more, eval_every, n_val = pick(args, full=(2000, 500, 100, 200), quick=(200, 100, 50, 20),
                                          smoke=(4, 2, 2, 2))
    model = pick(args, full={}, quick={}, smoke={"n_layer": 1, "n_head": 2, "n_embd": 32})
    if run_mode == "smoke":
        torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(12345)
    val = [corpus.batch("val", BATCH, BLOCK, gen) for _ in range(n_val)]
    results = Path(__file__).resolve().parents[1] / "results"
    progress = None if run_mode == "smoke" else results / f".moe_charlm.{run_mode}.progress.jsonl"
    checkpoints = Checkpoints(None if progress is None else results / f".moe_charlm.{run_mode}.checkpoints")
    match = {"steps": steps, "more": more, "val_batches": n_val}

    def first(variant: str, lr: float) -> dict[str, Any]:
        net = build_variant(variant, model)
        run = {"variant": variant, **train(net, corpus, lr, steps, eval_every, val, 0, min(100, steps // 10))}
        if variant == "dense":
            checkpoints.put(lr, net)
        else:
            run["load_balance"] = load_balance(net, after(steps))
            run["load_balance_val"] = load_balance(net, val)
        return run

    def after(step: int) -> list[Any]:
        """Training batches that follow ``step`` (never trained on by the run that ended there)."""
        return [corpus.batch("train", BATCH, BLOCK, torch.Generator().manual_seed(1_000_003 + step + 1 + i))
                for i in range(pick(args, full=50, quick=20, smoke=2))]

    sweep = LrSweep(first, progress, match)
    sweep.grid({v: pick(args, full=LRS, quick=[LRS[1]], smoke=[LRS[1]]) for v in ("dense", "moe")})
    sweep.bracket(["dense", "moe"], pick(args, full=MAX_EXTENSIONS, quick=0, smoke=0))
    dense, moe = sweep.best("dense"), sweep.best("moe")
    state = checkpoints.get(dense["lr"])

    def later(variant: str, lr: float) -> dict[str, Any]:
        if variant == "dense-continued":
            net = build_variant("dense", model)
            net.load_state_dict(state)
        else:
            net = upcycled_from(state, model)
        run = {"variant": variant, "from_dense_lr": dense["lr"],
               **train(net, corpus, lr, more, eval_every, val, steps, max(1, more // 10))}
        if variant == "upcycled":
            run["load_balance"] = load_balance(net, after(steps + more))
        return run

    cont = LrSweep(later, progress, {**match, "phase": "continue", "dense_lr": dense["lr"]})
    factors = pick(args, full=CONTINUE_FACTORS, quick=[0.3], smoke=[0.3])
    cont.grid({v: [float(f"{f * dense['lr']:.6g}") for f in factors] for v in ("dense-continued", "upcycled")})
    cont.bracket(["dense-continued", "upcycled"], pick(args, full=MAX_EXTENSIONS, quick=0, smoke=0))
    if args.sweep_only:
        print(f"runs done ({len(sweep.done) + len(cont.done)} in {progress}); run again without --sweep-only")
        return 0

    rounds, per_round = pick(args, full=(15, 20), quick=(3, 5), smoke=(2, 2))
    up_best = cont.best("upcycled")
    ms = speed(corpus, {"dense": lambda: build_variant("dense", model), "moe": lambda: build_variant("moe", model),
                         "upcycled": lambda: upcycled_from(state, model)},
                {"dense": dense["lr"], "moe": moe["lr"], "upcycled": up_best["lr"]}, rounds, per_round)
    # tokens/s of a variant over the dense model's = the dense model's time over the variant's
    ratio, ci = ratio_with_ci(ms["dense"], ms["moe"])
    up_ratio, up_ci = ratio_with_ci(ms["dense"], ms["upcycled"])
    tps = {k: [per_round * BATCH * BLOCK / (t / 1e3) for t in v] for k, v in ms.items()}
    balance, balance_val = moe["load_balance"], moe["load_balance_val"]
    worst = max(v["max_over_mean"] for v in balance.values())
    best = {"dense": dense, "moe": moe, "dense-continued": cont.best("dense-continued"), "upcycled": up_best}
    summary = {
        "dense_val_loss": final_loss(dense), "moe_val_loss": final_loss(moe),
        "moe_minus_dense": final_loss(moe) - final_loss(dense),
        "tokens_per_s_ratio": ratio, "tokens_per_s_ratio_ci": list(ci),
        "max_mean_load_aux_free": worst,
        "max_mean_load_aux_free_by_layer": {k: v["max_over_mean"] for k, v in balance.items()},
        "max_mean_load_aux_free_val": max(v["max_over_mean"] for v in balance_val.values()),
        "upcycled_val_loss": final_loss(up_best), "dense_continued_val_loss": final_loss(best["dense-continued"]),
        "upcycled_tokens_per_s_ratio": up_ratio, "upcycled_tokens_per_s_ratio_ci": list(up_ci),
        "best_lr": {k: v["lr"] for k, v in best.items()},
        "best_lr_inside_grid": {k: best_lr_inside((sweep.runs | cont.runs)[k]) for k in best},
    }
    rows = [{"variant": k, "lr": v["lr"], "final_val_loss": final_loss(v), "val_loss": v["val_loss"],
             "tokens_per_s": spread(tps[k]) if k in tps else None, "load_balance": v.get("load_balance")}
            for k, v in best.items()]
    path = write_results("moe", "charlm", args=args, results=rows, summary=summary,
                         peers={"dense": "nnforge char-gpt (nanoGPT's CPU configuration), AdamW at its bracketed "
                                         "best lr"},
                         extra={"runs": [r for rs in (sweep.runs | cont.runs).values() for r in rs],
                                "ms_per_round_samples": ms,
                                "setup": {"steps": steps, "continued_steps": more, "eval_every": eval_every,
                                          "val_batches": n_val, "batch": BATCH, "block": BLOCK,
                                          "model_options": model, "moe": moe_options(bool(model)),
                                          "adamw": ADAMW, "sweep_runs_resumed": sweep.resumed + cont.resumed,
                                          "speed_rounds": rounds, "speed_steps_per_round": per_round}})
    if run_mode == "full":
        plot(best, Path(__file__).resolve().parents[2] / "docs" / "moe_charlm.png")
    if progress is not None and path:
        progress.unlink(missing_ok=True)
    print(f"wrote {path}\n{summary}" if path else summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
