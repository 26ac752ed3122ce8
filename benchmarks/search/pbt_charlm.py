"""Benchmark: population-based training vs random search on the char-GPT, at equal total training steps.

    python benchmarks/search/pbt_charlm.py            # full: 3 seeds x (PBT 8 members, random search 8 trials) x 1,000 steps
    python benchmarks/search/pbt_charlm.py --quick    # 1 seed, 4 x 40 steps each (under a minute or two)
    python benchmarks/search/pbt_charlm.py --smoke    # a 1-layer 32-wide model, 2 x 4 steps; writes nothing

Setup (the nanoGPT CPU config of benchmarks/optim/charlm.py): char-GPT 4 layers / 4 heads / 128 wide, context 64,
batch 12, the loop's AdamW, warm-up (10% of the steps, at most 100) then cosine to 10%, clip 1.0; the same
training batches for every run. The space: ``lr`` log-uniform in [1e-4, 3e-2] and ``weight_decay`` in [0, 0.3].

* Random search: ``nnforge.search.search`` with the ``random`` sampler, ``population`` trials of ``steps`` steps each.
* PBT: ``nnforge.search.pbt.pbt``, ``population`` members of ``steps`` steps each (ready every ``interval`` steps,
  bottom 25% copy the top 25% and perturb x0.8/x1.2, resample with probability 0.25). Both draw their starting
  hyperparameters with Optuna's random sampler from the same seed.

Total training steps are equal: ``population x steps`` per method and seed. Members and trials are ranked on
``val_batches`` fixed validation batches (the selection set); the figure is the chosen model's loss on another
``val_batches`` fixed validation batches (the report set), so neither method is scored on the data it selected on.
``summary``: the mean over seeds of each method's chosen-model report loss (``pbt_best_val_loss``,
``random_best_val_loss``) and the number of seeds PBT won.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, mode, pick, write_results  # noqa: E402

BATCH, BLOCK = 12, 64
SPACE = {"lr": {"kind": "float", "low": 1e-4, "high": 3e-2, "log": True},
         "weight_decay": {"kind": "float", "low": 0.0, "high": 0.3}}


def _batches(corpus: Any, n: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [corpus.batch("val", BATCH, BLOCK, gen) for _ in range(n)]


def _loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    return model(batch[0], batch[1])[1]


@torch.no_grad()
def report_loss(model: torch.nn.Module, batches: list[Any]) -> float:
    model.eval()
    return statistics.fmean(float(_loss(model, b)) for b in batches)


class Setup:
    """What both methods share: corpus, batches, model options, the training config."""

    def __init__(self, corpus: Any, steps: int, n_val: int, model: dict[str, Any]) -> None:
        from nnforge.train import TrainConfig

        self.corpus, self.steps, self.model = corpus, steps, model
        self.select = _batches(corpus, n_val, 12345)
        self.report = _batches(corpus, n_val, 54321)
        self.train = TrainConfig(max_steps=steps, schedule="cosine", warmup_steps=min(100, steps // 10),
                                 min_lr_ratio=0.1, clip_norm=1.0, log_every=10_000)

    def train_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.corpus.batch("train", BATCH, BLOCK, torch.Generator().manual_seed(1_000_003 + step))

    def model_fn(self, seed: int) -> Any:
        from nnforge.models import build

        def make() -> torch.nn.Module:
            torch.manual_seed(seed)
            return build("char-gpt", **self.model)
        return make


def run_random(setup: Setup, seed: int, population: int, workdir: Path) -> dict[str, Any]:
    from nnforge.hardware import EnergyMeter
    from nnforge.search import Objective, Param, SearchConfig, search
    from nnforge.train import fit

    config = SearchConfig(space={k: Param(**v) for k, v in SPACE.items()}, objectives=[Objective(metric="val_loss")],
                          sampler="random", trials=population, seed=seed, study_name=f"random-{seed}")

    def trial(ctx: Any) -> dict[str, float]:
        model = setup.model_fn(seed)()
        train = setup.train.model_copy(update={"lr": ctx.params["lr"], "weight_decay": ctx.params["weight_decay"],
                                               "seed": seed})
        result = fit(model, setup.train_batch, config=train, eval_data=setup.select, loss_fn=_loss)
        return {"val_loss": float(result.evals[-1]["loss"]), "report_loss": report_loss(model, setup.report)}

    t0 = time.perf_counter()
    with EnergyMeter() as meter:
        result = search(trial, config, storage=workdir / f"random-{seed}.journal")
    best = result.best_trial
    if best is None:
        raise RuntimeError(f"every random-search trial failed (seed {seed})")
    return {"seconds": time.perf_counter() - t0, "energy_j": meter.reading.joules,
            "energy_source": meter.reading.source, "best_params": best.params,
            "best_select_loss": best.metrics["val_loss"], "best_report_loss": best.metrics["report_loss"],
            "trials": [{"params": t.params, "select_loss": t.metrics.get("val_loss"),
                        "report_loss": t.metrics.get("report_loss"), "state": t.state} for t in result.trials]}


def run_pbt(setup: Setup, seed: int, population: int, interval: int, workdir: Path) -> dict[str, Any]:
    from nnforge.search import Param
    from nnforge.search.pbt import PBTConfig, pbt
    from nnforge.train import load_checkpoint

    config = PBTConfig(space={k: Param(**v) for k, v in SPACE.items()}, population=population,
                       interval_steps=interval, total_steps=setup.steps, seed=seed,
                       train=setup.train.model_copy(update={"max_steps": setup.steps}))
    t0 = time.perf_counter()
    result = pbt(setup.model_fn(seed), setup.train_batch, config, workdir=workdir / f"pbt-{seed}",
                 eval_data=setup.select, loss_fn=_loss)
    seconds = time.perf_counter() - t0
    best = result.best
    model = setup.model_fn(seed)()
    load_checkpoint(result.best_checkpoint, model=model, restore_rng=False)  # type: ignore[arg-type]
    return {"seconds": seconds, "energy_j": result.energy_j, "energy_source": result.energy_source,
            "best_params": best.params, "best_select_loss": best.metric,
            "best_report_loss": report_loss(model, setup.report), "best_member": best.index,
            "exploits": len(result.events), "total_train_steps": result.total_train_steps,
            "members": [m.to_dict() for m in result.members],
            "events": result.to_dict()["events"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    from nnforge.data import load

    corpus = load("shakespeare-char")
    seeds = pick(args, full=[0, 1, 2], quick=[0], smoke=[0])
    population, steps, interval, n_val = pick(args, full=(8, 1000, 100, 50), quick=(4, 40, 10, 8),
                                              smoke=(2, 4, 2, 2))
    model = pick(args, full={}, quick={}, smoke={"n_layer": 1, "n_head": 2, "n_embd": 32})
    if mode(args) == "smoke":
        torch.set_num_threads(1)
    setup = Setup(corpus, steps, n_val, model)
    per_seed = []
    with tempfile.TemporaryDirectory(prefix="pbt-charlm-") as tmp:
        for seed in seeds:  # alternate the order per seed so machine drift hits both methods alike
            order = ["pbt", "random"] if seed % 2 == 0 else ["random", "pbt"]
            row: dict[str, Any] = {"seed": seed}
            for method in order:
                row[method] = (run_pbt(setup, seed, population, interval, Path(tmp)) if method == "pbt"
                               else run_random(setup, seed, population, Path(tmp)))
            print(f"seed {seed}: PBT {row['pbt']['best_report_loss']:.4f} ({row['pbt']['exploits']} exploits), "
                  f"random {row['random']['best_report_loss']:.4f}", flush=True)
            per_seed.append(row)
    pbt_losses = [r["pbt"]["best_report_loss"] for r in per_seed]
    random_losses = [r["random"]["best_report_loss"] for r in per_seed]
    summary = {"pbt_best_val_loss": statistics.fmean(pbt_losses),
               "random_best_val_loss": statistics.fmean(random_losses),
               "pbt_wins": sum(p < r for p, r in zip(pbt_losses, random_losses, strict=True)),
               "seeds": len(seeds), "pbt_better_on_mean": statistics.fmean(pbt_losses) < statistics.fmean(random_losses)}
    setup_doc = {"population": population, "steps_per_member": steps, "interval_steps": interval,
                 "total_train_steps_per_method": population * steps, "val_batches": n_val, "batch": BATCH,
                 "block": BLOCK, "model": "char-gpt 4x4x128" if not model else f"char-gpt {model}",
                 "space": SPACE, "train": setup.train.to_dict()}
    path = write_results("search", "pbt_charlm", args=args, results=per_seed, summary=summary,
                         peers={"random-search": {"sampler": "optuna RandomSampler via nnforge.search.search",
                                                  "trials": population, "steps_per_trial": steps}},
                         extra={"setup": setup_doc})
    print(f"wrote {path}\n{summary}" if path else summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
