"""Benchmark: adversarial robustness of the digits CNN, standard vs adversarially trained (Madry et al. 2018)
and TRADES-trained (Zhang et al. 2019).

    python benchmarks/evaluate/robust_digits.py           # full: 3 seeds x 3 models, 3,000 steps each (~30 min)
    python benchmarks/evaluate/robust_digits.py --quick   # 1 seed, 150 steps (under a minute)
    python benchmarks/evaluate/robust_digits.py --smoke   # 1 seed, 6 steps, 1 restart on 64 test rows; writes nothing

Data: scikit-learn digits through ``nnforge.data.load("digits")`` (stratified 80/20 split, seed 0, pixels / 16
in [0, 1]; the script checks that this is the split ``train_test_split`` gives). Model: ``build("digits-cnn")``.
All three models train alike — the optimizer benchmark's AdamW recipe (lr 4e-3, betas (0.9, 0.99), weight decay
0.1, cosine schedule with 5% warm-up, clipping at 1.0, batch 64), the same number of steps (3,000) and the same
seeds — except that the adversarial one trains on PGD examples (every row replaced, see TRAIN_ATTACK) made by the
AdversarialTraining callback, and the TRADES one minimises CE(f(x), y) + TRADES_BETA * KL(f(x) || f(x_adv)) with
x_adv from PGD on that KL (TradesLoss, same TRAIN_ATTACK ball and steps). Test attacks: PGD-10 L∞ at ε 0.1 and 0.2
(step ε/4, random start), FGSM L∞ at the same ε, PGD-10 L2 at ε 0.5 and 1.0, and PGD-50 L∞ ε 0.1 with 5 random
restarts (an example counts only if it survives all) as a check that the adversarial model's robustness is not
gradient masking. Summary figures are medians over seeds.

The training options come from a single-seed sweep (see docs/evaluate.md, "Adversarial training"): 3,000 steps
instead of 600 (PGD-10 ε=0.1 accuracy of the adversarial model 0.906 -> 0.939; the standard model's stays within
0.58-0.66 at 600, 1,500, 3,000 or 6,000 steps), a training radius of 0.2 instead of 0.15 (+0.01 at ε 0.1, +0.18 at
ε 0.2; 0.1, 0.125, 0.175, 0.25 and 0.3 were worse or no better) and TRADES β 1 instead of 6 (0.947 vs 0.925). An
EMA of the weights (WeightAverage, given to the standard model too), ε warm-up, PGD-10 instead of PGD-7 in
training, half-clean batches, lr 2e-3 and 6,000 steps moved the figure by no more than the spread between seeds,
so none is used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import add_mode_args, mode, pick, spread, write_results  # noqa: E402

BATCH = 64
LR, BETAS, WEIGHT_DECAY = 4e-3, (0.9, 0.99), 0.1
STEPS, QUICK_STEPS = 3000, 150  # every model, standard included, trains this many optimizer steps
TRAIN_ATTACK = {"kind": "pgd", "norm": "linf", "eps": 0.2, "steps": 7}  # step eps/4, random start
EVAL_ATTACKS: dict[str, dict[str, Any]] = {
    "pgd01": {"kind": "pgd", "norm": "linf", "eps": 0.1, "steps": 10},
    "pgd02": {"kind": "pgd", "norm": "linf", "eps": 0.2, "steps": 10},
    "fgsm01": {"kind": "fgsm", "norm": "linf", "eps": 0.1},
    "fgsm02": {"kind": "fgsm", "norm": "linf", "eps": 0.2},
    "pgd_l2_05": {"kind": "pgd", "norm": "l2", "eps": 0.5, "steps": 10},
    "pgd_l2_10": {"kind": "pgd", "norm": "l2", "eps": 1.0, "steps": 10},
}
TRADES_BETA = 1.0  # the paper uses 6; on digits β 1 is more robust at ε 0.1 (one seed: 0.947 vs 0.925)
STRONG = {"kind": "pgd", "norm": "linf", "eps": 0.1, "steps": 50, "step_size": 0.01}  # restarts: seeds 0..4
ATTACK_SEED = 0
GAIN_TARGET = 0.30  # issue 5: adversarial training must raise PGD-10 ε=0.1 accuracy by at least this
KINDS = ("standard", "adversarial", "trades")  # "adversarial": Madry et al.'s PGD training


def check_split(data: Any) -> bool:
    """True when nnforge's digits split is sklearn's stratified 80/20 split with random_state 0, pixels / 16."""
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    tr, te = train_test_split(np.arange(len(d.target)), test_size=0.2, stratify=d.target, random_state=0)
    x = (d.images / 16.0).astype(np.float32)[:, None]
    (xa, ya), (xb, yb) = data.splits["train"], data.splits["test"]
    return bool(np.array_equal(xa, x[tr]) and np.array_equal(ya, d.target[tr])
                and np.array_equal(xb, x[te]) and np.array_equal(yb, d.target[te]))


def train(data: Any, seed: int, steps: int, kind: str) -> tuple[torch.nn.Module, float]:
    """Train one model; ``kind`` is "standard", "adversarial" (Madry) or "trades"."""
    from nnforge.evaluate.robust import AdversarialTraining, AttackConfig, TradesLoss
    from nnforge.models import build
    from nnforge.train import TensorBatches, TrainConfig, fit

    x, y = (torch.from_numpy(a) for a in data.splits["train"])
    torch.manual_seed(seed)
    model = build("digits-cnn")
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=WEIGHT_DECAY)
    config = TrainConfig(max_steps=steps, lr=LR, schedule="cosine", warmup_steps=steps // 20, clip_norm=1.0,
                         log_every=10_000, seed=seed, device="cpu")
    callbacks: list[Any] = []
    loss_fn = None
    if kind == "adversarial":
        callbacks = [AdversarialTraining(AttackConfig(**TRAIN_ATTACK, seed=seed))]
    elif kind == "trades":
        trades = TradesLoss(AttackConfig(**TRAIN_ATTACK, seed=seed), beta=TRADES_BETA)
        callbacks, loss_fn = [trades.callback], trades
    t0 = time.perf_counter()
    fit(model, TensorBatches(x, y, batch_size=BATCH, seed=seed), config=config, optimizer=optimizer,
        callbacks=callbacks, loss_fn=loss_fn)
    return model.eval(), time.perf_counter() - t0


def survives_restarts(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, restarts: int) -> float:
    """Accuracy under STRONG, counting an example only if it is classified right after every restart."""
    from nnforge.evaluate.robust import AttackConfig, attack

    alive = torch.ones_like(y, dtype=torch.bool)
    for r in range(restarts):
        x_adv = attack(model, x, y, AttackConfig(**STRONG, seed=r))
        with torch.no_grad():
            alive &= model(x_adv).argmax(-1) == y
    return float(alive.float().mean())


def evaluate(model: torch.nn.Module, data: Any, restarts: int, rows: int | None = None) -> dict[str, float]:
    from nnforge.evaluate.robust import AttackConfig, robust_accuracy

    x, y = (torch.from_numpy(a[:rows]) for a in data.splits["test"])
    out = {"clean": robust_accuracy(model, x, y, None)}
    for name, options in EVAL_ATTACKS.items():
        out[name] = robust_accuracy(model, x, y, AttackConfig(**options, seed=ATTACK_SEED), batch_size=512)
    out[f"pgd50_linf01_restarts{restarts}"] = survives_restarts(model, x, y, restarts)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_mode_args(ap)
    args = ap.parse_args()
    from nnforge.data import load

    torch.set_num_threads(1)  # tiny models: one intra-op thread is fastest on a shared CPU
    data = load("digits")
    split_ok = check_split(data)
    seeds, steps, restarts = pick(args, full=([0, 1, 2], STEPS, 5), quick=([0], QUICK_STEPS, 2), smoke=([0], 6, 1))
    rows = 64 if mode(args) == "smoke" else None  # every test row but in smoke mode
    runs: list[dict[str, Any]] = []
    for seed in seeds:  # interleaved: standard, Madry, TRADES for each seed
        for kind in KINDS:
            model, seconds = train(data, seed, steps, kind)
            accs = evaluate(model, data, restarts, rows)
            runs.append({"model": kind, "seed": seed, "train_seconds": round(seconds, 2), "accuracy": accs})
            print(f"seed {seed} {kind:11s} {seconds:5.1f}s  " + "  ".join(f"{k} {v:.3f}" for k, v in accs.items()),
                  flush=True)
    table: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        mine = [r for r in runs if r["model"] == kind]
        table[kind] = {name: spread([r["accuracy"][name] for r in mine]) for name in mine[0]["accuracy"]}
        table[kind]["train_seconds"] = spread([r["train_seconds"] for r in mine])

    def med(kind: str, name: str) -> float:
        return statistics.median(r["accuracy"][name] for r in runs if r["model"] == kind)

    summary = {"clean_acc": med("standard", "clean"),
               "pgd01_acc_standard": med("standard", "pgd01"), "pgd01_acc_adversarial": med("adversarial", "pgd01"),
               "pgd02_acc_standard": med("standard", "pgd02"), "pgd02_acc_adversarial": med("adversarial", "pgd02"),
               "clean_acc_adversarial": med("adversarial", "clean"),
               "pgd01_gain": med("adversarial", "pgd01") - med("standard", "pgd01"),
               "clean_acc_trades": med("trades", "clean"), "pgd01_acc_trades": med("trades", "pgd01"),
               "pgd02_acc_trades": med("trades", "pgd02"),
               "pgd01_gain_trades": med("trades", "pgd01") - med("standard", "pgd01"),
               f"pgd50_linf01_restarts{restarts}_adversarial": med("adversarial", f"pgd50_linf01_restarts{restarts}"),
               f"pgd50_linf01_restarts{restarts}_trades": med("trades", f"pgd50_linf01_restarts{restarts}"),
               "pgd01_gain_target": GAIN_TARGET,
               "pgd01_gain_meets_target": med("adversarial", "pgd01") - med("standard", "pgd01") >= GAIN_TARGET,
               "seeds": seeds}
    setup = {"model": "digits-cnn", "steps": steps, "batch": BATCH,
             "optimizer": {"name": "AdamW", "lr": LR, "betas": BETAS, "weight_decay": WEIGHT_DECAY},
             "schedule": {"kind": "cosine", "warmup_steps": steps // 20}, "clip_norm": 1.0,
             "train_attack": {**TRAIN_ATTACK, "step_size": "eps/4", "random_start": True, "ratio": 1.0,
                              "seed": "the run's seed"},
             "trades": {"beta": TRADES_BETA, "attack": "TRAIN_ATTACK ascending KL(f(x) || f(x_adv))",
                        "reference": "Zhang et al. 2019"},
             "eval_attacks": {**EVAL_ATTACKS, f"pgd50_linf01_restarts{restarts}": {**STRONG, "seeds": list(range(restarts))}},
             "attack_seed": ATTACK_SEED, "seeds": seeds,
             "tuning": "training steps, training radius and TRADES beta chosen by a single-seed sweep; the standard "
                       "model trains the same steps with the same optimizer (see the module docstring)",
             "data": {"name": "digits", "split": "stratified 80/20, random_state 0", "pixels": "/ 16 in [0, 1]",
                      "matches_sklearn_split": split_ok,
                      "train_rows": int(len(data.splits["train"][1])), "test_rows": int(len(data.splits["test"][1]))}}
    path = write_results("evaluate", "robust_digits", args=args, results=table, summary=summary,
                         packages=("scikit-learn",), extra={"setup": setup, "runs": runs})
    print(f"wrote {path}\n{summary}" if path else summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
